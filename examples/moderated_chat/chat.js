'use strict';
// Alice and Bob chat through the published npm client (driftdb 1.0.12), against
// `drifttrio serve` with the moderated chat's webhooks (see README.md).
//
//   node chat.js http://127.0.0.1:8080
//
// Alice sends two messages, one with a banned word; Bob receives only the other,
// with Alice's name stamped in by the backend. Prints one JSON line.
globalThis.WebSocket = require('ws');
console.log = (...args) => console.error('[driftdb]', ...args); // stdout: the result only
const { Api, DbConnection } = require('driftdb');

const overall = setTimeout(() => { console.error('timed out'); process.exit(1); }, 20000);

async function join(socketUrl, name) {
  const db = new DbConnection();
  const errors = [];
  db.messageListener.addListener((m) => { if (m.type === 'error') errors.push(m.message); });
  await db.connect(`${socketUrl}?name=${name}`);
  const seen = [];
  db.subscribe('chat', (sv) => seen.push(sv.value));
  await db.testLatency(); // subscribed
  return { db, seen, errors };
}

async function main() {
  const room = await new Api(process.argv[2]).newRoom();
  const alice = await join(room.socket_url, 'alice');
  const bob = await join(room.socket_url, 'bob');
  for (const text of ['hi all', 'buy spam', 'bye']) {
    alice.db.send({ type: 'push', key: 'chat', value: { text }, action: { type: 'append' } });
  }
  // Alice's pushes are decided in order; her pong comes after all three.
  await alice.db.testLatency();
  await bob.db.testLatency(); // and Bob has received what was broadcast before it
  const result = { room: room.room, bob: bob.seen, alice: alice.seen, refused: alice.errors };
  for (const p of [alice, bob]) p.db.disconnect();
  clearTimeout(overall);
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((err) => { console.error(err && err.stack ? err.stack : err); process.exit(1); });
