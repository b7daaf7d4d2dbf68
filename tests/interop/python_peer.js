'use strict';
// Scenario: the npm client and a Python drifttrio.client peer in one room.
// argv: BASE_URL ROOM_ID. The Python side (tests/interop/test_python_client.py)
// runs SharedState, Reducer and Presence at the same time. Node dispatches five
// actions, sets the shared state once, and waits to see the Python peer's.
const { driftdb, errorsOf, openConnection, roomFromArgs, run, waitUntil } = require('./common');

function reduce(state, action) {
  if (action.type === 'add') return { total: state.total + action.n, log: [...state.log, action.n] };
  return state;
}

run(async (baseUrl) => {
  const room = await roomFromArgs(new driftdb.Api(baseUrl));
  const db = await openConnection(room.socket_url);
  const seenState = [];
  const state = new driftdb.StateListener({ db, key: 'shared', callback: (v) => seenState.push(v) });
  state.subscribe();
  const reducer = new driftdb.Reducer({
    key: 'log',
    db,
    reducer: reduce,
    initialValue: { total: 0, log: [] },
    sizeThreshold: 4,
    callback: () => {},
  });
  reducer.subscribe();
  let presence = {};
  const pres = new driftdb.PresenceListener({
    db,
    clientId: 'node',
    initialState: { name: 'Node' },
    callback: (map) => { presence = map; },
  });
  pres.subscribe();

  for (let n = 101; n <= 105; n++) reducer.dispatch({ type: 'add', n });
  state.setStateOptimistic({ from: 'node' });

  await waitUntil(() => seenState.some((v) => v && v.from === 'python'), 'the Python state');
  await waitUntil(() => reducer.compactor.lastConfirmedState.log.length === 10, 'ten actions');
  await waitUntil(() => presence.python !== undefined, 'the Python presence');

  const result = {
    seen_state: seenState,
    reducer_state: reducer.compactor.lastConfirmedState,
    confirmed_seq: reducer.compactor.lastConfirmedSeq,
    presence: Object.fromEntries(Object.entries(presence).map(([k, v]) => [k, v.value])),
    errors: errorsOf(db),
  };
  // Keep announcing until the Python side has seen this client too.
  await new Promise((resolve) => setTimeout(resolve, Number(process.env.LINGER_MS || 1500)));
  pres.destroy();
  reducer.destroy();
  state.destroy();
  db.disconnect();
  return result;
});
