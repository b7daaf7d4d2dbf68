'use strict';
// Scenario 3: a Reducer whose stream the client compacts on stream_size.
//
// argv: BASE_URL [ROOM_ID] ; env ACTIONS (default 45), SIZE_THRESHOLD (default:
// the client's own default, 30).
const { driftdb, barrier, errorsOf, httpSend, openConnection, roomFromArgs, run, waitUntil } =
  require('./common');

const KEY = 'counter';
const ACTIONS = Number(process.env.ACTIONS || 45);
const SIZE_THRESHOLD = process.env.SIZE_THRESHOLD ? Number(process.env.SIZE_THRESHOLD) : undefined;

// Order-sensitive on purpose: the state is the list of applied actions.
function reduce(state, action) {
  if (action.type === 'add') return { total: state.total + action.n, log: [...state.log, action.n] };
  return state;
}

function makeReducer(db, states) {
  const r = new driftdb.Reducer({
    key: KEY,
    db,
    reducer: reduce,
    initialValue: { total: 0, log: [] },
    sizeThreshold: SIZE_THRESHOLD,
    callback: (s) => states.push(s),
  });
  r.subscribe();
  return r;
}

run(async (baseUrl) => {
  const room = await roomFromArgs(new driftdb.Api(baseUrl));
  const writer = await openConnection(room.socket_url);
  const writerStates = [];
  const reducer = makeReducer(writer, writerStates);
  await barrier(writer);

  for (let n = 1; n <= ACTIONS; n++) reducer.dispatch({ type: 'add', n });
  // All echoes confirmed ...
  await waitUntil(() => reducer.compactor.lastConfirmedSeq === ACTIONS, 'all actions confirmed');
  // ... then every stream_size the server sent has been handled once the pong
  // of a ping sent now has arrived, and every compact the client sent because
  // of them has been handled once the pong of the next ping arrives.
  await barrier(writer);
  await barrier(writer);

  const retained = await httpSend(room.http_url, { type: 'get', key: KEY, seq: 0 });

  // A fresh subscriber rebuilds the state from the compacted stream.
  const reader = await openConnection(room.socket_url);
  const readerStates = [];
  const fresh = makeReducer(reader, readerStates);
  await waitUntil(() => fresh.compactor.lastConfirmedSeq === ACTIONS, 'fresh reducer to catch up');

  const sent = (db) => db.received;
  const result = {
    actions: ACTIONS,
    writer_state: reducer.compactor.state,
    writer_confirmed_state: reducer.compactor.lastConfirmedState,
    fresh_state: fresh.compactor.state,
    fresh_confirmed_seq: fresh.compactor.lastConfirmedSeq,
    stream_sizes: sent(writer).filter((m) => m.type === 'stream_size').map((m) => m.size),
    // compacts are re-broadcast as pushes at an already-seen seq
    writer_push_seqs: sent(writer).filter((m) => m.type === 'push').map((m) => m.seq),
    fresh_init: sent(reader).filter((m) => m.type === 'init'),
    retained,
    errors: [...errorsOf(writer), ...errorsOf(reader)],
  };
  reducer.destroy();
  fresh.destroy();
  writer.disconnect();
  reader.disconnect();
  return result;
});
