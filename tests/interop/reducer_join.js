'use strict';
// Scenario 10: Reducers that join a room while another client dispatches (issue 17).
//
// One client dispatches to a Reducer every PACE_MS; JOINS other clients open a
// socket and subscribe a Reducer on the same key, one every JOIN_EVERY_MS, as
// a page does (half subscribe before the socket opens, as useSharedReducer
// does, half right after). The dispatcher's compactor compacts as usual. When
// the dispatching stops, every joiner's confirmed state must equal the
// dispatcher's: a joiner that took a push for its first value keeps a
// truncated state for good.
//
// argv: BASE_URL [ROOM_ID] ; env PACE_MS (default 8), JOINS (default 10),
// JOIN_EVERY_MS (default 1.5 pace + 7, at least 40).
const { driftdb, barrier, errorsOf, openConnection, roomFromArgs, run, waitUntil } =
  require('./common');

const KEY = 'shared-log';
const PACE_MS = Number(process.env.PACE_MS || 8);
const JOINS = Number(process.env.JOINS || 10);
// Not a multiple of the pace, so joins land at every phase of it.
const JOIN_EVERY_MS = Number(process.env.JOIN_EVERY_MS || Math.max(40, Math.round(PACE_MS * 1.5) + 7));

// Order-sensitive: the state is every applied action, in order.
function reduce(state, action) {
  return { count: state.count + 1, log: [...state.log, action.n] };
}

function makeReducer(db) {
  return new driftdb.Reducer({
    key: KEY,
    db,
    reducer: reduce,
    initialValue: { count: 0, log: [] },
    callback: () => {},
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function join(socketUrl, subscribeFirst) {
  const db = new driftdb.DbConnection();
  db.received = [];
  db.messageListener.addListener((m) => db.received.push(m));
  const reducer = makeReducer(db);
  if (subscribeFirst) {
    reducer.subscribe(); // queued, sent when the socket opens
    await db.connect(socketUrl);
  } else {
    await db.connect(socketUrl);
    reducer.subscribe();
  }
  return { db, reducer };
}

run(async (baseUrl) => {
  const room = await roomFromArgs(new driftdb.Api(baseUrl));
  const writer = await openConnection(room.socket_url);
  const dispatcher = makeReducer(writer);
  dispatcher.subscribe();
  await barrier(writer);

  let dispatched = 0;
  let dispatching = true;
  const dispatchLoop = (async () => {
    while (dispatching) {
      dispatched += 1;
      dispatcher.dispatch({ n: dispatched });
      await sleep(PACE_MS);
    }
  })();

  const joiners = [];
  for (let i = 0; i < JOINS; i++) {
    await sleep(JOIN_EVERY_MS);
    joiners.push(await join(room.socket_url, i % 2 === 0));
  }
  await sleep(JOIN_EVERY_MS);
  dispatching = false;
  await dispatchLoop;

  await waitUntil(
    () => dispatcher.compactor.lastConfirmedState.count === dispatched,
    'the dispatcher to confirm its actions',
  );
  // Every push has reached every joiner once its pong is back.
  await Promise.all(joiners.map(({ db }) => barrier(db)));

  const expected = dispatcher.compactor.lastConfirmedState;
  const joins = joiners.map(({ db, reducer }) => {
    const state = reducer.compactor.lastConfirmedState;
    const keyed = db.received.filter((m) => m.key === KEY);
    return {
      first_frame: keyed.length ? keyed[0].type : null,
      count: state.count,
      first_action: state.log.length ? state.log[0] : null,
      equal: JSON.stringify(state) === JSON.stringify(expected),
    };
  });
  const result = {
    pace_ms: PACE_MS,
    dispatched,
    expected_count: expected.count,
    joins,
    truncated: joins.filter((j) => !j.equal).length,
    errors: [...errorsOf(writer), ...joiners.flatMap(({ db }) => errorsOf(db))],
  };
  dispatcher.destroy();
  writer.disconnect();
  for (const { db, reducer } of joiners) {
    reducer.destroy();
    db.disconnect();
  }
  return result;
});
