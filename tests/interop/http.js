'use strict';
// Scenario 6: HttpConnection (POST http_url) against a WebSocket subscriber.
const { driftdb, barrier, errorsOf, openConnection, roomFromArgs, run, waitUntil } =
  require('./common');

const KEY = 'via-http';

async function attempt(promise) {
  try {
    return { ok: true, value: await promise };
  } catch (err) {
    return { ok: false, error: String(err && err.message ? err.message : err) };
  }
}

run(async (baseUrl) => {
  const room = await roomFromArgs(new driftdb.Api(baseUrl));
  const sub = await openConnection(room.socket_url);
  const pushed = [];
  sub.subscribe(KEY, (sv) => pushed.push(sv));
  await barrier(sub);

  const http = new driftdb.HttpConnection(room.http_url);
  const replies = {};
  replies.append1 = await http.send({ type: 'push', key: KEY, value: { n: 1 }, action: { type: 'append' } });
  replies.append2 = await http.send({ type: 'push', key: KEY, value: { n: 2 }, action: { type: 'append' } });
  replies.relay = await http.send({ type: 'push', key: KEY, value: { n: 3 }, action: { type: 'relay' } });
  replies.get = await http.send({ type: 'get', key: KEY, seq: 0 });
  replies.get_since_1 = await http.send({ type: 'get', key: KEY, seq: 1 });
  replies.get_unknown_key = await http.send({ type: 'get', key: 'nothing-here', seq: 0 });
  replies.ping = await http.send({ type: 'ping', nonce: 7 });
  replies.ping_no_nonce = await http.send({ type: 'ping' });
  replies.replace = await http.send({ type: 'push', key: KEY, value: { n: 4 }, action: { type: 'replace' } });
  // HttpConnection throws on a non-2xx answer.
  const bad = await attempt(http.send({ type: 'push', key: KEY })); // no value
  const unknownRoom = await attempt(
    new driftdb.HttpConnection(`${baseUrl}/room/no-such-room/send`).send({ type: 'ping' }),
  );

  await waitUntil(() => pushed.length >= 4, 'the subscriber to get 4 pushes');
  await barrier(sub);
  const result = {
    replies,
    bad,
    unknown_room: unknownRoom,
    ws_pushes: pushed,
    errors: errorsOf(sub),
  };
  sub.disconnect();
  return result;
});
