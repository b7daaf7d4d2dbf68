'use strict';
// Scenario 8: total order with concurrent writers.
//
// WRITERS connections (default 4) each push PER_WRITER messages (default 200)
// on one key, concurrently, alternating append and relay; SUBSCRIBERS
// connections (default 3) record every (seq, value) they get for the key. The
// last writer and the last subscriber use CBOR. The writers record their own
// echoes too. Python checks that everybody saw one identical sequence.
const { driftdb, barrier, errorsOf, openConnection, roomFromArgs, run, waitUntil } =
  require('./common');

const KEY = 'ordered';
const WRITERS = Number(process.env.WRITERS || 4);
const PER_WRITER = Number(process.env.PER_WRITER || 200);
const SUBSCRIBERS = Number(process.env.SUBSCRIBERS || 3);
const TOTAL = WRITERS * PER_WRITER;

const tick = () => new Promise((resolve) => setImmediate(resolve));

run(async (baseUrl) => {
  const room = await roomFromArgs(new driftdb.Api(baseUrl));
  const receivers = [];
  for (let s = 0; s < SUBSCRIBERS; s++) {
    receivers.push({ name: `sub${s}`, db: await openConnection(room.socket_url, s === SUBSCRIBERS - 1) });
  }
  const writers = [];
  for (let w = 0; w < WRITERS; w++) {
    const db = await openConnection(room.socket_url, w === WRITERS - 1);
    writers.push(db);
    receivers.push({ name: `writer${w}`, db });
  }
  for (const r of receivers) {
    r.seen = [];
    r.db.subscribe(KEY, (sv) => r.seen.push([sv.seq, `${sv.value.w}:${sv.value.i}`]));
  }
  // Every receiver is in the room (its get was handled) before anyone writes.
  await Promise.all(receivers.map((r) => barrier(r.db)));

  await Promise.all(
    writers.map(async (db, w) => {
      for (let i = 0; i < PER_WRITER; i++) {
        const action = i % 2 === 0 ? 'append' : 'relay';
        db.send({ type: 'push', key: KEY, value: { w, i }, action: { type: action } });
        if (i % 5 === 4) await tick(); // let the other writers' sends interleave
      }
    }),
  );
  await waitUntil(() => receivers.every((r) => r.seen.length >= TOTAL), `all receivers to get ${TOTAL}`);
  // Anything extra (a duplicate) would have arrived before this pong.
  await Promise.all(receivers.map((r) => barrier(r.db)));

  const result = {
    total: TOTAL,
    writers: WRITERS,
    per_writer: PER_WRITER,
    receivers: Object.fromEntries(receivers.map((r) => [r.name, r.seen])),
    errors: receivers.flatMap((r) => errorsOf(r.db)),
  };
  for (const r of receivers) r.db.disconnect();
  return result;
});
