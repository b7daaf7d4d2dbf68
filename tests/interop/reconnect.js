'use strict';
// Scenario 9: reconnect in CBOR mode.
//
// The client's reconnect calls connect(dbUrl, cbor) again with the URL that
// already ends in ?cbor=true, so it opens ...connect?cbor=true?cbor=true. This
// drops a CBOR DbConnection's socket (the client's own reconnect logic then
// runs, after its 1 s delay) and checks that the reconnected client speaks
// CBOR, still receives pushes (it never re-sends its get), and can push.
// It also opens a raw socket on the doubled URL directly.
const CBOR = require('cbor-web');
const WebSocket = require('ws');
const { driftdb, barrier, deferred, errorsOf, openConnection, roomFromArgs, run, waitUntil } =
  require('./common');

const KEY = 'after-reconnect';

async function rawDoubledQuery(socketUrl) {
  const url = `${socketUrl}?cbor=true?cbor=true`;
  const ws = new WebSocket(url);
  const opened = deferred();
  const reply = deferred();
  ws.on('open', opened.resolve);
  ws.on('error', (err) => { opened.reject(err); reply.reject(err); });
  ws.on('unexpected-response', (_req, res) => opened.reject(new Error(`HTTP ${res.statusCode} for ${url}`)));
  ws.on('message', (data, isBinary) => reply.resolve({ data, isBinary }));
  await opened.promise;
  ws.send(JSON.stringify({ type: 'ping', nonce: 42 })); // input in either form is accepted
  const { data, isBinary } = await reply.promise;
  ws.close();
  return {
    url_query: url.slice(url.indexOf('?')),
    binary: isBinary,
    message: isBinary ? CBOR.decode(data) : JSON.parse(data.toString()),
  };
}

run(async (baseUrl) => {
  const room = await roomFromArgs(new driftdb.Api(baseUrl));
  const raw = await rawDoubledQuery(room.socket_url);

  const peer = await openConnection(room.socket_url, false);
  const client = await openConnection(room.socket_url, true);
  const peerSeen = [];
  const clientSeen = [];
  peer.subscribe(KEY, (sv) => peerSeen.push(sv));
  client.subscribe(KEY, (sv) => clientSeen.push(sv));
  const statuses = [];
  client.statusListener.addListener((s) => statuses.push(s.connected));
  await Promise.all([barrier(peer), barrier(client)]);
  const firstUrl = client.connection.url;

  // Drop the socket under the client; its onclose handler reconnects.
  const dropped = client.connection;
  dropped.close();
  await waitUntil(
    () => client.connection !== dropped && client.status.connected,
    'the client to reconnect',
  );
  const secondUrl = client.connection.url;
  const frames = [];
  client.connection.addEventListener('message', (ev) => {
    frames.push(ev.data instanceof ArrayBuffer ? 'binary' : typeof ev.data);
  });

  // The reconnected client gets pushes without re-subscribing ...
  peer.send({ type: 'push', key: KEY, value: { from: 'peer' }, action: { type: 'append' } });
  await waitUntil(() => clientSeen.some((sv) => sv.value.from === 'peer'), 'a push after reconnect');
  // ... and its own pushes (CBOR, with bytes) reach the others.
  client.send({
    type: 'push',
    key: KEY,
    value: { from: 'client', bytes: new Uint8Array([9, 8, 7]) },
    action: { type: 'append' },
  });
  await waitUntil(() => peerSeen.some((sv) => sv.value.from === 'client'), 'the peer to get the push');
  const latency = await barrier(client);

  const result = {
    raw,
    first_url_query: firstUrl.slice(firstUrl.indexOf('?')),
    second_url_query: secondUrl.slice(secondUrl.indexOf('?')),
    statuses,
    frames_after_reconnect: frames,
    client_seen: clientSeen.map((sv) => ({ seq: sv.seq, from: sv.value.from })),
    peer_seen: peerSeen.map((sv) => ({ seq: sv.seq, value: sv.value })),
    latency_after_reconnect: latency,
    errors: [...errorsOf(peer), ...errorsOf(client)],
  };
  peer.disconnect();
  client.disconnect();
  return result;
});
