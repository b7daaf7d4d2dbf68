// drifttrio room inspector: plain JavaScript, served by drifttrio at /ui/ (no build step).
//
// It opens a *debug* connection (?debug=true) to a room on the server that served
// this page, through the same route and access rules as any client: the server
// sends the retained stream of every key on join (as `init`s, a long stream in
// several), then every `push`; a push that changed a stream is followed at once
// by a `stream_size` of the key, from which the page rebuilds the stream (see
// applyChange). It needs the room id (or a room URL); `?room=ID` opens one
// directly, `?token=T` is passed along.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(window.location.search);
  const base = new URL('..', window.location.href); // the server root (any prefix)

  /** key -> retained entries [{seq, value}], seq ascending */
  let streams = new Map();
  /** key -> the last push of the key, until its stream_size says what it did */
  let pending = new Map();
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

  /**
   * A push of `key` followed by the stream's new length `size`: the stream is now
   * the last (size - 1 - later) entries before the push's seq, the pushed value,
   * then the entries after it (an append keeps all before; a replace, none; a
   * compact at seq s drops those up to s, and keeps the ones after).
   */
  function applyChange(key, push, size) {
    const entries = streams.get(key) || [];
    const before = entries.filter((e) => e.seq < push.seq);
    const after = entries.filter((e) => e.seq > push.seq);
    const keep = Math.max(0, size - 1 - after.length);
    streams.set(key, [
      ...before.slice(before.length - keep),
      { seq: push.seq, value: push.value },
      ...after,
    ].slice(-size));
  }

  function onMessage(message) {
    logMessage(message);
    if (message.type === 'init') {
      // On join; a long stream comes as several inits of its key, seqs ascending.
      const entries = streams.get(message.key) || [];
      const last = entries.length ? entries[entries.length - 1].seq : 0;
      for (const e of message.data) {
        if (e.seq > last) entries.push({ seq: e.seq, value: e.value });
        seen(e.seq);
      }
      streams.set(message.key, entries);
    } else if (message.type === 'push') {
      // A relay leaves the stream as it is; a change is followed by stream_size.
      if (!streams.has(message.key)) streams.set(message.key, []);
      pending.set(message.key, { seq: message.seq, value: message.value });
      seen(message.seq);
    } else if (message.type === 'stream_size') {
      const push = pending.get(message.key);
      if (!push) return; // the reply to this page's own push: already applied
      pending.delete(message.key);
      applyChange(message.key, push, message.size);
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
    pending = new Map();
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
