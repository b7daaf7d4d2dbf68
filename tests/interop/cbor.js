'use strict';
// Scenario 5: CBOR mode (connect(url, true)) and byte strings (Uint8Array).
//
// A CBOR client pushes a value holding a Uint8Array; another CBOR client gets
// the same bytes back as a Uint8Array, a JSON client gets them as an array of
// ints 0-255 (drifttrio's documented JSON form of bytes). Also reports how
// cbor-web (the client's CBOR library) encodes a Uint8Array.
const CBOR = require('cbor-web');
const { driftdb, barrier, deferred, errorsOf, openConnection, roomFromArgs, run } =
  require('./common');

const KEY = 'binary';
const BYTES = [0, 1, 2, 127, 128, 200, 255];

run(async (baseUrl) => {
  const room = await roomFromArgs(new driftdb.Api(baseUrl));
  const sender = await openConnection(room.socket_url, true);
  const cborPeer = await openConnection(room.socket_url, true);
  const jsonPeer = await openConnection(room.socket_url, false);

  // What kind of frames each connection gets on the wire.
  const frameKinds = { sender: [], cbor_peer: [], json_peer: [] };
  for (const [name, db] of [['sender', sender], ['cbor_peer', cborPeer], ['json_peer', jsonPeer]]) {
    db.connection.addEventListener('message', (ev) => {
      frameKinds[name].push(ev.data instanceof ArrayBuffer ? 'binary' : typeof ev.data);
    });
  }

  const gotCbor = deferred();
  const gotJson = deferred();
  cborPeer.subscribe(KEY, (sv) => gotCbor.resolve(sv));
  jsonPeer.subscribe(KEY, (sv) => gotJson.resolve(sv));
  sender.subscribe(KEY, () => {});
  await Promise.all([barrier(cborPeer), barrier(jsonPeer), barrier(sender)]);

  const value = { bytes: new Uint8Array(BYTES), text: 'héllo ✓', n: 1.5, list: [1, null, true] };
  sender.send({ type: 'push', key: KEY, value, action: { type: 'append' } });
  const [cborGot, jsonGot] = await Promise.all([gotCbor.promise, gotJson.promise]);
  await barrier(sender); // any error reply to the push has arrived by now

  const cborBytes = cborGot.value.bytes;
  const result = {
    cbor_web_uint8array_hex: Buffer.from(CBOR.encode(new Uint8Array([1, 2, 255]))).toString('hex'),
    seq: cborGot.seq,
    cbor_peer: {
      is_uint8array: cborBytes instanceof Uint8Array,
      bytes: cborBytes instanceof Uint8Array ? Array.from(cborBytes) : cborBytes,
      text: cborGot.value.text,
      n: cborGot.value.n,
      list: cborGot.value.list,
    },
    json_peer: jsonGot.value,
    frame_kinds: frameKinds,
    errors: { sender: errorsOf(sender), cbor_peer: errorsOf(cborPeer), json_peer: errorsOf(jsonPeer) },
  };
  for (const db of [sender, cborPeer, jsonPeer]) db.disconnect();
  return result;
});
