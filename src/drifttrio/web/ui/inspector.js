// drifttrio room inspector: plain JavaScript, served by drifttrio at /ui/ (no build step).
//
// It opens a *debug* connection (?debug=true) to a room on the server that served
// this page, through the same route and access rules as any client: the server
// sends an `init` of every key on join and again whenever a key's retained
// stream changes, and relays `push` for relay-only values. It needs the room id
// (or a room URL); `?room=ID` opens one directly, `?token=T` is passed along.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(window.location.search);
  const base = new URL('..', window.location.href); // the server root (any prefix)

  /** key -> retained entries [{seq, value}], seq ascending */
  let streams = new Map();
  let selected = null;
  let socket = null;
  let count = 0;
  let highSeq = 0;

  const show = (value) => JSON.stringify(value);

  function setStatus(state, text) {
    $('status').dataset.state = state;
    $('status').textContent = text;
  }

  function roomIdFrom(text) {
    const trimmed = text.trim();
    const match = trimmed.match(/\/room\/([A-Za-z0-9_-]+)/);
    if (match) return match[1];
    const idOnly = trimmed.match(/^[A-Za-z0-9_-]{1,128}$/);
    return idOnly ? trimmed : null;
  }

  function seen(seq) {
    if (typeof seq === 'number' && seq > highSeq) {
      highSeq = seq;
      $('seq').textContent = String(seq);
    }
  }

  function renderKeys() {
    const body = $('keys').querySelector('tbody');
    body.replaceChildren();
    for (const key of [...streams.keys()].sort()) {
      const entries = streams.get(key);
      const row = document.createElement('tr');
      row.dataset.key = key;
      row.dataset.retained = String(entries.length);
      if (key === selected) row.classList.add('selected');
      const last = entries.length ? String(entries[entries.length - 1].seq) : '';
      for (const text of [key, String(entries.length), last]) {
        const cell = document.createElement('td');
        cell.textContent = text;
        row.append(cell);
      }
      row.addEventListener('click', () => select(key));
      body.append(row);
    }
  }

  function select(key, keepPosition = false) {
    const entries = streams.get(key) || [];
    const slider = $('seq-slider');
    const atEnd = !keepPosition || Number(slider.value) >= Number(slider.max);
    selected = key;
    $('detail').hidden = false;
    $('detail-key').textContent = key;
    slider.max = String(Math.max(entries.length - 1, 0));
    if (atEnd) slider.value = slider.max;
    renderDetail();
    renderKeys();
  }

  /** The selected key as it was at the chosen retained seq (time travel). */
  function renderDetail() {
    const entries = streams.get(selected) || [];
    const index = Math.min(Number($('seq-slider').value), entries.length - 1);
    const list = $('stream-at');
    list.replaceChildren();
    if (index < 0) {
      $('at-seq').textContent = '(nothing retained)';
      $('value-at').textContent = '';
      return;
    }
    const entry = entries[index];
    $('at-seq').textContent = `seq ${entry.seq} (${index + 1} of ${entries.length})`;
    $('at-seq').dataset.seq = String(entry.seq);
    $('value-at').textContent = JSON.stringify(entry.value, null, 2);
    for (const e of entries.slice(0, index + 1)) {
      const li = document.createElement('li');
      li.dataset.seq = String(e.seq);
      li.textContent = `#${e.seq} ${show(e.value)}`;
      list.append(li);
    }
  }

  function logMessage(message) {
    count += 1;
    $('count').textContent = String(count);
    const li = document.createElement('li');
    li.dataset.type = message.type;
    if (message.key !== undefined) li.dataset.key = message.key;
    const time = new Date().toLocaleTimeString();
    li.textContent = `${time} ${show(message)}`;
    const live = $('live');
    live.prepend(li);
    while (live.children.length > 500) live.lastChild.remove();
  }

  function onMessage(message) {
    logMessage(message);
    if (message.type === 'init') {
      streams.set(message.key, message.data.map((e) => ({ seq: e.seq, value: e.value })));
      for (const e of message.data) seen(e.seq);
    } else if (message.type === 'push') {
      // A relayed value (retained values arrive as an init of their key).
      if (!streams.has(message.key)) streams.set(message.key, []);
      seen(message.seq);
    } else if (message.type === 'error') {
      $('push-result').textContent = `error: ${message.message}`;
      return;
    } else {
      return;
    }
    renderKeys();
    if (message.key === selected) select(selected, true);
  }

  async function open(text) {
    const roomId = roomIdFrom(text);
    if (!roomId) {
      setStatus('failed', 'not a room id or room URL');
      return;
    }
    if (socket) socket.close(1000);
    streams = new Map();
    selected = null;
    count = 0;
    highSeq = 0;
    $('detail').hidden = true;
    $('live').replaceChildren();
    $('room').textContent = roomId;
    $('seq').textContent = '0';
    renderKeys();
    setStatus('connecting', 'connecting');
    const token = params.get('token');
    const suffix = token ? `?token=${encodeURIComponent(token)}` : '';
    let info;
    try {
      const response = await fetch(new URL(`room/${roomId}${suffix}`, base));
      info = await response.json();
      if (!response.ok) throw new Error(info.message || `HTTP ${response.status}`);
    } catch (err) {
      setStatus('failed', `cannot open the room: ${err.message}`);
      return;
    }
    const url = new URL(info.socket_url);
    url.searchParams.set('debug', 'true');
    if (token) url.searchParams.set('token', token);
    const ws = new WebSocket(url);
    socket = ws;
    ws.addEventListener('open', () => {
      if (socket === ws) setStatus('live', 'live (debug connection)');
    });
    ws.addEventListener('message', (event) => {
      if (socket !== ws || typeof event.data !== 'string') return;
      onMessage(JSON.parse(event.data));
    });
    ws.addEventListener('close', (event) => {
      if (socket === ws) setStatus('closed', `closed (${event.code}${event.reason ? ` ${event.reason}` : ''})`);
    });
    history.replaceState(null, '', `?room=${encodeURIComponent(roomId)}${token ? `&token=${encodeURIComponent(token)}` : ''}`);
  }

  function push(event) {
    event.preventDefault();
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      $('push-result').textContent = 'open a room first';
      return;
    }
    let value;
    try {
      value = JSON.parse($('push-value').value);
    } catch (err) {
      $('push-result').textContent = `value is not JSON: ${err.message}`;
      return;
    }
    const type = $('push-action').value;
    const action = type === 'compact' ? { type, seq: Number($('push-seq').value) } : { type };
    socket.send(JSON.stringify({ type: 'push', key: $('push-key').value, value, action }));
    $('push-result').textContent = `sent (${type})`;
  }

  function syncActionFields() {
    $('push-seq-label').hidden = $('push-action').value !== 'compact';
  }

  $('open-form').addEventListener('submit', (event) => {
    event.preventDefault();
    open($('room-input').value);
  });
  $('push-form').addEventListener('submit', push);
  $('push-action').addEventListener('change', syncActionFields);
  $('seq-slider').addEventListener('input', renderDetail);
  syncActionFields();
  const initial = params.get('room');
  if (initial) {
    $('room-input').value = initial;
    open(initial);
  }
})();
