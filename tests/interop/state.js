'use strict';
// Scenario 2: StateListener between DbConnections ({v, i} replace, 20 ms debounce).
const { driftdb, barrier, errorsOf, httpSend, openConnection, roomFromArgs, run, waitUntil } =
  require('./common');

const KEY = 'shared-state';

function listener(db, seen) {
  const l = new driftdb.StateListener({ db, key: KEY, callback: (v) => seen.push(v) });
  l.subscribe();
  return l;
}

run(async (baseUrl) => {
  const room = await roomFromArgs(new driftdb.Api(baseUrl));
  const a = await openConnection(room.socket_url);
  const b = await openConnection(room.socket_url);
  const seenA = [];
  const seenB = [];
  const la = listener(a, seenA);
  const lb = listener(b, seenB);
  await Promise.all([barrier(a), barrier(b)]);

  // Five updates in a burst: the first goes out at once, the rest are
  // debounced into one trailing update carrying the last value.
  for (let n = 1; n <= 5; n++) la.setStateOptimistic({ n, who: 'a' });
  await waitUntil(() => seenB.some((v) => v && v.n === 5), 'B to see {n: 5}');
  await barrier(a);

  // And the other way round.
  lb.setStateOptimistic({ n: 6, who: 'b' });
  await waitUntil(() => seenA.some((v) => v && v.n === 6), 'A to see {n: 6}');

  // A late joiner gets the current state from the retained stream (init).
  const c = await openConnection(room.socket_url);
  const seenC = [];
  const lc = listener(c, seenC);
  await waitUntil(() => seenC.length > 0, 'C to get the current state');

  const retained = await httpSend(room.http_url, { type: 'get', key: KEY, seq: 0 });

  const pushesFrom = (db) => db.received.filter((m) => m.type === 'push' && m.key === KEY);
  const result = {
    seen_a: seenA,
    seen_b: seenB,
    seen_c: seenC,
    rand_id_a: la.randId,
    rand_id_b: lb.randId,
    pushes_seen_by_a: pushesFrom(a).map((m) => ({ seq: m.seq, value: m.value })),
    retained,
    errors: [...errorsOf(a), ...errorsOf(b), ...errorsOf(c)],
  };
  for (const [l, db] of [[la, a], [lb, b], [lc, c]]) {
    l.destroy();
    db.disconnect();
  }
  return result;
});
