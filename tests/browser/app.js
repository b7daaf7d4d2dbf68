// A tiny browser app written against the published `driftdb` npm client, the
// way a real app would use it. Bundled for the browser with esbuild
// (`npm run build`, or the test's own esbuild run); nothing here knows about
// drifttrio.
//
// Query string:
//   server=URL   base URL of the DriftDB server (required)
//   room=ID      join this room (default: create one with Api.newRoom())
//   cbor=true    connect in CBOR mode (binary frames)
import { Api, DbConnection, StateListener } from 'driftdb';

const params = new URLSearchParams(window.location.search);
const $ = (id) => document.getElementById(id);

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function fromHex(text) {
  const clean = text.replace(/\s+/g, '');
  if (!/^([0-9a-fA-F]{2})*$/.test(clean)) throw new Error(`not hex: ${text}`);
  return new Uint8Array(clean.match(/../g)?.map((h) => parseInt(h, 16)) ?? []);
}

/**
 * JSON, except that a Uint8Array shows as "bytes(HEX)", so a test can tell
 * bytes apart. (cbor-web decodes a byte string as its Buffer polyfill, a
 * Uint8Array whose toJSON would hide that: look at the value before toJSON.)
 */
function show(value) {
  return JSON.stringify(value, function replacer(key, v) {
    const original = this[key];
    return original instanceof Uint8Array ? `bytes(${hex(original)})` : v;
  });
}

function showError(message) {
  const li = document.createElement('li');
  li.textContent = message;
  $('errors').append(li);
}

async function main() {
  const serverUrl = params.get('server');
  if (!serverUrl) throw new Error('no ?server= in the page URL');
  const cbor = ['1', 'true'].includes(params.get('cbor') ?? '');
  $('mode').textContent = cbor ? 'cbor' : 'json';

  const api = new Api(serverUrl);
  const roomId = params.get('room');
  const room = roomId ? await api.getRoom(roomId) : await api.newRoom();
  if (!room.socket_url) throw new Error(`no such room: ${JSON.stringify(room)}`);
  $('room').textContent = room.room;

  const db = new DbConnection();
  db.statusListener.addListener((status) => {
    const state = $('status').dataset.state;
    if (!status.connected) $('status').textContent = 'disconnected';
    else if (state !== 'ready') $('status').textContent = 'connected';
  });
  db.messageListener.addListener((message) => {
    if (message.type === 'error') showError(`server error: ${message.message}`);
  });
  await db.connect(room.socket_url, cbor);

  // Count the frames by kind, to show CBOR mode really uses binary frames.
  const frames = { text: 0, binary: 0 };
  db.connection.addEventListener('message', (event) => {
    frames[event.data instanceof ArrayBuffer ? 'binary' : 'text'] += 1;
    $('frames').textContent = `text=${frames.text} binary=${frames.binary}`;
  });

  // Shared state: last writer wins, debounced by the client.
  const state = new StateListener({
    db,
    key: 'state',
    callback: (value) => {
      $('state').textContent = show(value);
    },
  });
  state.subscribe();
  $('set-state').addEventListener('click', () => {
    try {
      state.setStateOptimistic(JSON.parse($('state-input').value));
    } catch (err) {
      showError(String(err));
    }
  });

  // A stream: every value pushed to `chat`, with its sequence number.
  db.subscribe('chat', ({ seq, value }) => {
    const li = document.createElement('li');
    li.dataset.seq = String(seq);
    li.textContent = `#${seq} ${show(value)}`;
    $('log').append(li);
  });
  const push = (value) => db.send({ type: 'push', key: 'chat', value, action: { type: 'append' } });
  $('push').addEventListener('click', () => {
    try {
      push(JSON.parse($('value').value));
    } catch (err) {
      showError(String(err));
    }
  });
  $('push-bytes').addEventListener('click', () => {
    try {
      push({ bytes: fromHex($('bytes').value) });
    } catch (err) {
      showError(String(err));
    }
  });

  // A ping round trip: the server handles one connection's messages in order,
  // so once the pong is back both subscriptions are in place.
  const latency = await db.testLatency();
  $('latency').textContent = `${Math.round(latency)} ms`;
  $('status').textContent = 'ready';
  $('status').dataset.state = 'ready';
}

main().catch((err) => {
  $('status').textContent = `failed: ${err && err.message ? err.message : err}`;
  $('status').dataset.state = 'failed';
  showError(String(err && err.stack ? err.stack : err));
});
