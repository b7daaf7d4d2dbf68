'use strict';
// Scenario 4: PresenceListener: two clients see each other's presence values.
const { driftdb, errorsOf, openConnection, roomFromArgs, run, waitUntil } = require('./common');

function presence(db, clientId, initialState, seen) {
  const p = new driftdb.PresenceListener({
    db,
    clientId,
    initialState,
    callback: (map) => seen.push(map),
  });
  p.subscribe();
  return p;
}

const valueOf = (seen, client) => {
  const last = seen[seen.length - 1];
  return last && last[client] ? last[client].value : undefined;
};

run(async (baseUrl) => {
  const room = await roomFromArgs(new driftdb.Api(baseUrl));
  const a = await openConnection(room.socket_url);
  const b = await openConnection(room.socket_url);
  const seenA = [];
  const seenB = [];
  const pa = presence(a, 'alice', { cursor: [1, 2], name: 'Alice' }, seenA);
  const pb = presence(b, 'bob', { cursor: [3, 4], name: 'Bob' }, seenB);

  // Presence is re-sent every second, so each side sees the other even if it
  // joined after the other's first message.
  await waitUntil(() => valueOf(seenA, 'bob') && valueOf(seenB, 'alice'), 'both presences');
  const first = { a_sees: seenA[seenA.length - 1], b_sees: seenB[seenB.length - 1] };

  // An update is sent soon (minPresenceInterval, 20 ms), not a second later.
  const t0 = Date.now();
  pa.updateState({ cursor: [9, 9], name: 'Alice' });
  await waitUntil(() => {
    const v = valueOf(seenB, 'alice');
    return v && v.cursor[0] === 9;
  }, 'B to see the update');
  const updateMs = Date.now() - t0;

  const relays = (db) => db.received.filter((m) => m.type === 'push' && m.key === '__presence');
  const result = {
    first,
    a_keys: Object.keys(seenA[seenA.length - 1]),
    b_after_update: seenB[seenB.length - 1],
    update_ms: updateMs,
    relay_seqs_a: relays(a).map((m) => m.seq),
    relay_values_b: relays(b).map((m) => m.value),
    // presence uses relay: nothing is retained
    init_data: [...a.received, ...b.received].filter((m) => m.type === 'init').map((m) => m.data),
    errors: [...errorsOf(a), ...errorsOf(b)],
  };
  pa.destroy();
  pb.destroy();
  a.disconnect();
  b.disconnect();
  return result;
});
