// drifttrio room inspector: plain JavaScript, served by drifttrio at /ui/ (no build step).
//
// It opens a *debug* connection (?debug=true) to a room on the server that served
// this page, through the same route and access rules as any client: the server
// sends the retained stream of every key on join (as `init`s, a long stream in
// several), an empty `init` of each key relayed lately, then every `push`; a push
// that changed a stream is followed at once by a `stream_size` of the key, from
// which the page rebuilds the stream (see applyChange). "Live messages" shows one
// entry per push (with the stream's new size when it changed) and one per key for
// its join `init`s, never a stream's values. It needs the room id (or a room URL);
// `?room=ID` opens one directly, `?token=T` is passed along.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(window.location.search);
  const base = new URL('..', window.location.href); // the server root (any prefix)

  /** Longest text of one live message; a push of a large value is cut there. */
  const MAX_LINE = 300;
  /** Live messages kept on the page, newest first. */
  const MAX_LIVE = 500;
  /** Values of a stream listed under "Stream up to this seq" (the last ones). */
  const MAX_LISTED = 200;

  /** key -> retained entries [{seq, value}], seq ascending */
  let streams = new Map();
  /** key -> the stream's length as the server last said (init, stream_size) */
  let sizes = new Map();
  /** key -> the highest seq seen for the key (a relay's too) */
  let lastSeq = new Map();
  /** key -> {seq, value, li}: the last push of the key, until its stream_size says what it did */
  let pending = new Map();
  /** key -> {li, values, messages}: the live entry of the key's join inits */
  let initEntries = new Map();
  /** [{key, json}] relays this page sent and has not seen come back yet */
  let ownRelays = [];
  let selected = null;
  let socket = null;
  let count = 0;
  let highSeq = 0;
  let renderQueued = false;

  const show = (value) => JSON.stringify(value);
  const cut = (text) => (text.length > MAX_LINE ? `${text.slice(0, MAX_LINE)}… (${text.length} characters)` : text);

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

  function seen(key, seq) {
    if (typeof seq !== 'number') return;
    if (seq > (lastSeq.get(key) || 0)) lastSeq.set(key, seq);
    if (seq > highSeq) {
      highSeq = seq;
      $('seq').textContent = String(seq);
    }
  }

  /** Render the keys (and the selected key) once per frame, however many messages came. */
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      if (selected !== null) select(selected, true); // renders the keys too
      else renderKeys();
    });
  }

  function renderKeys() {
    const body = $('keys').querySelector('tbody');
    body.replaceChildren();
    for (const key of [...streams.keys()].sort()) {
      const retained = sizes.get(key) || 0;
      const row = document.createElement('tr');
      row.dataset.key = key;
      row.dataset.retained = String(retained);
      if (key === selected) row.classList.add('selected');
      const last = lastSeq.has(key) ? String(lastSeq.get(key)) : '';
      for (const text of [key, String(retained), last]) {
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
    $('stream-earlier').textContent = '';
    if (index < 0) {
      $('at-seq').textContent = '(nothing retained)';
      $('value-at').textContent = '';
      return;
    }
    const entry = entries[index];
    $('at-seq').textContent = `seq ${entry.seq} (${index + 1} of ${entries.length})`;
    $('at-seq').dataset.seq = String(entry.seq);
    $('value-at').textContent = JSON.stringify(entry.value, null, 2);
    const first = Math.max(0, index + 1 - MAX_LISTED);
    if (first) $('stream-earlier').textContent = `… ${first} earlier values`;
    list.start = first + 1;
    for (const e of entries.slice(first, index + 1)) {
      const li = document.createElement('li');
      li.dataset.seq = String(e.seq);
      li.textContent = `#${e.seq} ${show(e.value)}`;
      list.append(li);
    }
  }

  /** Add an entry to "Live messages" (newest first); returns it, to annotate later. */
  function logLine(type, key, text) {
    const li = document.createElement('li');
    li.dataset.type = type;
    if (key !== undefined) li.dataset.key = key;
    li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    const live = $('live');
    live.prepend(li);
    while (live.children.length > MAX_LIVE) live.lastChild.remove();
    return li;
  }

  /** One live entry per key for its join inits (a long stream comes in several). */
  function logInit(message) {
    let entry = initEntries.get(message.key);
    if (!entry) {
      const time = new Date().toLocaleTimeString();
      entry = { li: logLine('init', message.key, ''), time, values: 0, messages: 0, first: null, last: null };
      initEntries.set(message.key, entry);
    }
    entry.messages += 1;
    entry.values += message.data.length;
    if (message.data.length) {
      if (entry.first === null) entry.first = message.data[0].seq;
      entry.last = message.data[message.data.length - 1].seq;
    }
    const range = entry.values ? `, seq ${entry.first}…${entry.last}` : ' (nothing retained: a relay key)';
    const parts = entry.messages > 1 ? ` in ${entry.messages} messages` : '';
    entry.li.dataset.values = String(entry.values);
    entry.li.textContent = `${entry.time} init ${show(message.key)}: ${entry.values} value${entry.values === 1 ? '' : 's'}${range}${parts}`;
  }

  /**
   * A push of `key` followed by the stream's new length `size`: the stream is now
   * the last (size - 1 - later) entries before the push's seq, the pushed value,
   * then the entries after it (an append keeps all before; a replace, none; a
   * compact at seq s drops those up to s, and keeps the ones after). An append
   * (the common case) costs O(1).
   */
  function applyChange(key, push, size) {
    const entries = streams.get(key) || [];
    const entry = { seq: push.seq, value: push.value };
    if (!entries.length || entries[entries.length - 1].seq < push.seq) {
      entries.push(entry);
      if (entries.length > size) entries.splice(0, entries.length - size);
      streams.set(key, entries);
      return;
    }
    const before = entries.filter((e) => e.seq < push.seq);
    const after = entries.filter((e) => e.seq > push.seq);
    const keep = Math.max(0, size - 1 - after.length);
    streams.set(key, [...before.slice(before.length - keep), entry, ...after].slice(-size));
  }

  /** Whether this push is the echo of a relay this page sent (whose direct
   *  stream_size reply must not be taken for a change). */
  function isOwnRelay(message) {
    const json = show(message.value);
    const index = ownRelays.findIndex((r) => r.key === message.key && r.json === json);
    if (index < 0) return false;
    ownRelays.splice(0, index + 1);
    return true;
  }

  function onMessage(message) {
    count += 1;
    $('count').textContent = String(count);
    if (message.type === 'init') {
      // On join; a long stream comes as several inits of its key, seqs ascending.
      logInit(message);
      const entries = streams.get(message.key) || [];
      const last = entries.length ? entries[entries.length - 1].seq : 0;
      for (const e of message.data) {
        if (e.seq > last) entries.push({ seq: e.seq, value: e.value });
        seen(message.key, e.seq);
      }
      streams.set(message.key, entries);
      sizes.set(message.key, entries.length);
    } else if (message.type === 'push') {
      // A relay leaves the stream as it is; a change is followed by stream_size.
      const li = logLine('push', message.key, cut(show(message)));
      li.dataset.seq = String(message.seq);
      if (!streams.has(message.key)) streams.set(message.key, []);
      if (isOwnRelay(message)) pending.delete(message.key);
      else pending.set(message.key, { seq: message.seq, value: message.value, li });
      seen(message.key, message.seq);
    } else if (message.type === 'stream_size') {
      const push = pending.get(message.key);
      if (!push) return; // the direct reply to this page's own push: already applied
      pending.delete(message.key);
      applyChange(message.key, push, message.size);
      sizes.set(message.key, message.size);
      push.li.dataset.size = String(message.size);
      push.li.textContent += ` → ${message.size} retained`;
    } else if (message.type === 'error') {
      logLine('error', undefined, cut(show(message)));
      $('push-result').textContent = `error: ${message.message}`;
      return;
    } else {
      logLine(message.type, message.key, cut(show(message)));
      return;
    }
    scheduleRender();
  }

  async function open(text) {
    const roomId = roomIdFrom(text);
    if (!roomId) {
      setStatus('failed', 'not a room id or room URL');
      return;
    }
    if (socket) socket.close(1000);
    streams = new Map();
    sizes = new Map();
    lastSeq = new Map();
    pending = new Map();
    initEntries = new Map();
    ownRelays = [];
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
    const key = $('push-key').value;
    if (type === 'relay') ownRelays = [...ownRelays.slice(-99), { key, json: show(value) }];
    socket.send(JSON.stringify({ type: 'push', key, value, action }));
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
