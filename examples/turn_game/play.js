'use strict';
// Two players and a spectator play tic-tac-toe through the published npm client
// (driftdb 1.0.12) against `drifttrio serve --hooks game:TicTacToe`.
//
//   node play.js http://127.0.0.1:8080
//
// x and o each try some illegal moves (a taken cell, out of turn, two at once,
// after the end); the server refuses them, so every client sees the same legal
// game. Prints one JSON line: the moves each client saw, and the refusals each
// got (the npm client ignores `error` messages; its message listener sees them).
globalThis.WebSocket = require('ws');
console.log = (...args) => console.error('[driftdb]', ...args); // stdout: the result only
const { Api, DbConnection } = require('driftdb');

const baseUrl = process.argv[2];
const overall = setTimeout(() => { console.error('timed out'); process.exit(1); }, 20000);

async function join(socketUrl, player) {
  const db = new DbConnection();
  const errors = [];
  db.messageListener.addListener((m) => { if (m.type === 'error') errors.push(m.message); });
  await db.connect(player ? `${socketUrl}?player=${player}` : socketUrl);
  const seen = [];
  db.subscribe('moves', (sv) => seen.push(sv.value));
  await db.testLatency(); // the subscription is in place
  return { db, seen, errors };
}

// A move, and a round trip on the same connection: the room has decided it (and
// sent its broadcast everywhere) before the next player moves.
async function move(who, ...cells) {
  for (const cell of cells) {
    who.db.send({ type: 'push', key: 'moves', value: { cell }, action: { type: 'append' } });
  }
  await who.db.testLatency();
}

async function main() {
  const room = await new Api(baseUrl).newRoom();
  const x = await join(room.socket_url, 'x');
  const o = await join(room.socket_url, 'o');
  const spectator = await join(room.socket_url, null);
  await move(x, 4);
  await move(o, 4); // taken
  await move(x, 0); // not x's turn
  await move(o, 0);
  await move(spectator, 8); // spectators only watch
  await move(x, 2, 6); // two moves at once: the second is out of turn
  await move(o, 8);
  await move(x, 6); // x wins: 2-4-6
  await move(o, 3); // the game is over
  // Every broadcast was sent before these pongs.
  await Promise.all([x, o, spectator].map((p) => p.db.testLatency()));
  const result = {
    seen: { x: x.seen, o: o.seen, spectator: spectator.seen },
    refused: { x: x.errors, o: o.errors, spectator: spectator.errors },
  };
  for (const p of [x, o, spectator]) p.db.disconnect();
  clearTimeout(overall);
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((err) => { console.error(err && err.stack ? err.stack : err); process.exit(1); });
