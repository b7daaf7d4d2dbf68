'use strict';
// Scenario: a Reducer subscribing to a stream longer than one init chunk. The
// server sends it as several `init`s of the key (seqs ascending); the client
// dispatches each value in turn, so the state is the same as from one init.
//
// argv: BASE_URL ROOM_ID ; env VALUES (how many the key holds), CBOR (1: CBOR mode).
const { driftdb, errorsOf, openConnection, roomFromArgs, run, waitUntil } = require('./common');

const KEY = 'counter';
const VALUES = Number(process.env.VALUES);
const CBOR = process.env.CBOR === '1';

function reduce(state, action) {
  if (action.type === 'add') return { total: state.total + action.n, count: state.count + 1 };
  return state;
}

run(async (baseUrl) => {
  const room = await roomFromArgs(new driftdb.Api(baseUrl));
  const db = await openConnection(room.socket_url, CBOR);
  const reducer = new driftdb.Reducer({
    key: KEY,
    db,
    reducer: reduce,
    initialValue: { total: 0, count: 0 },
    callback: () => {},
  });
  reducer.subscribe();
  await waitUntil(() => reducer.compactor.lastConfirmedSeq === VALUES, 'the whole stream');
  const inits = db.received.filter((m) => m.type === 'init');
  const result = {
    state: reducer.compactor.state,
    confirmed_seq: reducer.compactor.lastConfirmedSeq,
    inits: inits.length,
    init_seqs: inits.flatMap((m) => m.data.map((e) => e.seq)),
    errors: errorsOf(db),
  };
  reducer.destroy();
  db.disconnect();
  return result;
});
