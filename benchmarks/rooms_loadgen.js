// Driver for benchmarks/small_rooms.py: many small rooms, the life of one short
// connection, and a connection storm, against any DriftDB server (drifttrio, the
// minimal relays). Each mode prints JSON lines on stdout.
//
//   rooms (default): ROOMS rooms, each with M subscribers and one publisher keeping
//     WINDOW pushes in flight (1: it sends the next push when its own echo arrives).
//     Every member joins with a `get` and waits for its `init` before anyone pushes.
//     Prints {"phase":"start"} and {"phase":"stop"} around the measured window (the
//     caller reads the server's CPU time there), then the result: messages delivered
//     per second to the subscribers (echoes not counted), push -> own echo latency
//     p50/p99 in ms, and the check that every member of every room saw seqs 1, 2,
//     3, ... with no gap, duplicate or reordering up to its room's last seq (lost /
//     reordered must be 0).
//   lifecycle: makes CONCURRENCY rooms, prints {"phase":"ready"} and waits for a line
//     on stdin (the caller reads the server's CPU time); then CONNECTIONS times, with
//     CONCURRENCY at once (one room each, so a room's connections follow each other):
//     open a WebSocket, `get` and wait for the `init`, push and wait for the echo
//     (its seq must be the room's next one), close and wait for the close handshake.
//     Prints {"phase":"done",...} and waits for a line on stdin before exiting.
//   storm: makes ROOMS rooms, prints {"phase":"ready"} and waits for a line on stdin;
//     then opens CONNECTIONS WebSockets spread over the rooms, as fast as it can with
//     at most CONCURRENCY between "connect" and "init", each sending a `get` and
//     waiting for its `init`, and keeps them open. Prints {"phase":"done",...} (rate =
//     completed / seconds) and waits for a line on stdin (the caller reads the
//     server's RSS) before closing everything.
//
//   node rooms_loadgen.js --url http://127.0.0.1:8080 --rooms 100 --subscribers 3 --window 1
//   node rooms_loadgen.js --url http://127.0.0.1:8080 --mode lifecycle --connections 2000 --concurrency 50
//   node rooms_loadgen.js --url http://127.0.0.1:8080 --mode storm --connections 10000 --concurrency 500
'use strict'
const WebSocket = require('ws')
const readline = require('readline')

function arg(name, dflt) {
  const i = process.argv.indexOf('--' + name)
  return i >= 0 ? process.argv[i + 1] : dflt
}
const base = arg('url', 'http://127.0.0.1:8080').replace(/\/$/, '')
const mode = arg('mode', 'rooms')
const roomCount = Number(arg('rooms', '100'))
const M = Number(arg('subscribers', '3'))
const seconds = Number(arg('seconds', '4'))
const warmup = Number(arg('warmup', '1'))
const windowSize = Number(arg('window', '1'))
const connections = Number(arg('connections', '2000'))
const concurrency = Number(arg('concurrency', '50'))
const drainSeconds = Number(arg('drain', '10'))
// Opening the rooms' members before the measured part: how many at once.
const SETUP_AT_ONCE = 50

const sleep = (ms) => new Promise(r => setTimeout(r, ms))
const now = () => Number(process.hrtime.bigint()) / 1e6 // ms

async function newRoom() {
  const res = await fetch(base + '/new', { method: 'POST' })
  if (!res.ok) throw new Error(`POST /new: ${res.status}`)
  return res.json()
}

// Runs fn(0..count-1) with at most `width` calls in flight.
async function pool(count, width, fn) {
  let next = 0
  async function worker() {
    while (next < count) await fn(next++)
  }
  await Promise.all(Array.from({ length: Math.min(width, count) }, worker))
}

async function newRooms(count) {
  const rooms = new Array(count)
  await pool(count, 20, async (i) => { rooms[i] = await newRoom() })
  return rooms
}

function open(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false })
    ws.once('open', () => resolve(ws))
    ws.once('error', reject)
  })
}

// The seq of a broadcast read from the frame's bytes (as in loadgen.js): -1 if none.
// The payload pushed here never contains "seq", so the last occurrence is the message's.
const SEQ = Buffer.from('"seq"')
function seqOf(buf) {
  let i = buf.lastIndexOf(SEQ)
  if (i < 0) return -1
  i += SEQ.length
  while (i < buf.length && (buf[i] === 0x3a || buf[i] === 0x20)) i++ // ':' and ' '
  let n = -1
  for (; i < buf.length; i++) {
    const c = buf[i] - 0x30
    if (c < 0 || c > 9) break
    n = (n < 0 ? 0 : n * 10) + c
  }
  return n
}

function parse(buf) {
  try { return JSON.parse(buf) } catch (e) { return { type: 'unparsable' } }
}

const GET = JSON.stringify({ type: 'get', key: 'bench', seq: 0 })
const PUSH = JSON.stringify({ type: 'push', key: 'bench', action: { type: 'relay' }, value: { n: 0, text: 'hello world' } })

// One member's view of its room: the next seq it must see, and what went wrong.
class Member {
  constructor(ws) {
    this.ws = ws
    this.next = 1 // the room is fresh: the first broadcast is seq 1
    this.lost = 0 // seqs skipped over (a gap)
    this.reordered = 0 // a seq at or below one already seen (duplicate or out of order)
    this.other = 0 // messages that are neither a broadcast nor an awaited reply
    this.samples = [] // the first few of them
    this.closed = null // close code, when the server closed the connection
    this.waiting = null // resolves on the next non-broadcast message
    this.onPush = null
    ws.on('message', (data) => this.message(data))
    ws.on('close', (code) => {
      if (!this.terminated) this.closed = code
      if (this.waiting) { const w = this.waiting; this.waiting = null; w({ type: 'closed', code }) }
    })
    ws.on('error', () => {})
  }

  message(data) {
    const seq = seqOf(data)
    if (seq < 0) {
      const msg = parse(data)
      if (this.waiting) { const w = this.waiting; this.waiting = null; w(msg); return }
      this.other++
      if (this.samples.length < 3) this.samples.push(msg)
      return
    }
    if (seq === this.next) this.next++
    else if (seq > this.next) { this.lost += seq - this.next; this.next = seq + 1 } else this.reordered++
    if (this.onPush) this.onPush()
  }

  // Sends text and resolves with the next message that is not a broadcast.
  request(text) {
    return new Promise((resolve) => { this.waiting = resolve; this.ws.send(text) })
  }

  last() { return this.next - 1 }

  terminate() { this.terminated = true; this.ws.terminate() }
}

async function until(cond, timeoutMs) {
  const deadline = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > deadline) return false
    await sleep(5)
  }
  return true
}

function percentile(sorted, p) {
  if (!sorted.length) return null
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]
}

// Opens a member of `url` and makes it join `bench` with a `get` answered by an `init`.
async function join(url) {
  const member = new Member(await open(url))
  const reply = await member.request(GET)
  if (reply.type !== 'init') throw new Error('expected init, got ' + JSON.stringify(reply))
  return member
}

// One room of the rooms mode: M subscribers and one publisher.
class Room {
  constructor(info) {
    this.info = info
    this.subs = []
    this.pub = null
    this.sent = [] // send times of the pushes in flight, oldest first
    this.stopped = false
  }

  fill() {
    while (!this.stopped && this.sent.length < windowSize) {
      this.sent.push(now())
      this.pub.ws.send(PUSH)
    }
  }

  members() { return [...this.subs, this.pub] }
}

async function rooms() {
  let delivered = 0
  let counting = false
  const latencies = []
  const setupStart = now()
  const all = (await newRooms(roomCount)).map(info => new Room(info))
  // Every member of every room, opened SETUP_AT_ONCE at a time; nobody pushes
  // before all of them have their `init`.
  const slots = all.flatMap(room => Array.from({ length: M + 1 }, (_, i) => [room, i]))
  await pool(slots.length, SETUP_AT_ONCE, async (n) => {
    const [room, i] = slots[n]
    const member = await join(room.info.socket_url)
    if (i < M) {
      member.onPush = () => { if (counting) delivered++ }
      room.subs.push(member)
    } else {
      member.onPush = () => {
        const sent = room.sent.shift()
        if (counting) latencies.push(now() - sent)
        room.fill()
      }
      room.pub = member
    }
  })
  const setupSeconds = (now() - setupStart) / 1000
  for (const room of all) room.fill()
  await sleep(warmup * 1000)
  // The caller reads the server's CPU time at these two lines.
  console.log(JSON.stringify({ phase: 'start' }))
  counting = true
  const t0 = now()
  await sleep(seconds * 1000)
  counting = false
  const elapsed = (now() - t0) / 1000
  console.log(JSON.stringify({ phase: 'stop' }))
  for (const room of all) room.stopped = true
  // Drain: each publisher gets the echoes of its last pushes, which fixes its room's
  // last seq; every member must then reach it.
  const echoed = await until(
    () => all.every(room => room.sent.length === 0 || room.pub.closed !== null), drainSeconds * 1000)
  const finals = all.map(room => Math.max(...room.members().map(s => s.last())))
  await until(() => all.every((room, i) =>
    room.members().every(s => s.closed !== null || s.last() >= finals[i])), drainSeconds * 1000)
  let lost = 0
  let reordered = 0
  let other = 0
  const closed = []
  const samples = []
  all.forEach((room, i) => {
    for (const s of room.members()) {
      lost += s.lost + Math.max(0, finals[i] - s.last()) // a gap, or never got the last ones
      reordered += s.reordered
      other += s.other
      if (s.closed !== null) closed.push(s.closed)
      for (const o of s.samples) if (samples.length < 3) samples.push(o)
    }
  })
  for (const room of all) for (const s of room.members()) s.terminate()
  latencies.sort((a, b) => a - b)
  return {
    mode, rooms: roomCount, subscribers: M, window: windowSize, seconds: elapsed,
    setup_seconds: setupSeconds, delivered, per_second: delivered / elapsed,
    pushes_per_second: latencies.length / elapsed,
    p50_ms: percentile(latencies, 0.5), p99_ms: percentile(latencies, 0.99),
    final_seq: finals.reduce((a, b) => a + b, 0), drained: echoed,
    lost, reordered, other, closed, samples,
  }
}

// Waits for the caller's go-ahead (a line on stdin, or its end).
function phases() {
  const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]()
  return async (report) => {
    console.log(JSON.stringify(report))
    await lines.next()
  }
}

async function lifecycle() {
  const phase = phases()
  const roomInfos = await newRooms(concurrency)
  const lastSeq = new Array(concurrency).fill(0) // the seq each room's last echo had
  await phase({ phase: 'ready', rooms: concurrency })
  let completed = 0
  let failed = 0
  let lost = 0
  let reordered = 0
  let other = 0
  const errors = []
  let started = 0
  const t0 = now()
  // Worker w owns room w: its connections follow each other, so the echo of the
  // push of each must carry the room's next seq.
  async function one(w) {
    let ws = null
    try {
      ws = await open(roomInfos[w].socket_url)
      const inbox = []
      let wake = null
      let closeCode = null
      ws.on('message', (data) => { inbox.push(data); if (wake) { wake(); wake = null } })
      ws.on('close', (code) => { closeCode = code; if (wake) { wake(); wake = null } })
      const next = async () => {
        while (!inbox.length) {
          if (closeCode !== null) throw new Error('closed by the server with ' + closeCode)
          await new Promise(r => { wake = r })
        }
        return inbox.shift()
      }
      ws.send(GET)
      const init = parse(await next())
      if (init.type !== 'init') throw new Error('expected init, got ' + JSON.stringify(init))
      ws.send(PUSH)
      let seq = -1
      for (;;) {
        const data = await next()
        seq = seqOf(data)
        if (seq >= 0) break
        other++
      }
      const expected = lastSeq[w] + 1
      if (seq > expected) lost += seq - expected
      else if (seq < expected) reordered++
      lastSeq[w] = Math.max(lastSeq[w], seq)
      const done = new Promise(r => ws.once('close', r))
      ws.close(1000)
      await done
      completed++
    } catch (e) {
      failed++
      if (errors.length < 3) errors.push(String(e.message || e))
      if (ws) ws.terminate()
    }
  }
  async function worker(w) {
    while (started < connections) {
      started++
      await one(w)
    }
  }
  await Promise.all(Array.from({ length: concurrency }, (_, w) => worker(w)))
  const elapsed = (now() - t0) / 1000
  await phase({
    phase: 'done', mode, connections, concurrency, completed, failed, seconds: elapsed,
    per_second: completed / elapsed, lost, reordered, other, errors,
  })
  return null
}

async function storm() {
  const phase = phases()
  const roomInfos = await newRooms(roomCount)
  await phase({ phase: 'ready', rooms: roomCount })
  const members = []
  const times = []
  const errors = []
  let failed = 0
  const t0 = now()
  await pool(connections, concurrency, async (i) => {
    const start = now()
    try {
      members.push(await join(roomInfos[i % roomCount].socket_url))
      times.push(now() - start)
    } catch (e) {
      failed++
      if (errors.length < 3) errors.push(String(e.message || e))
    }
  })
  const elapsed = (now() - t0) / 1000
  times.sort((a, b) => a - b)
  const closed = members.filter(m => m.closed !== null).map(m => m.closed)
  await phase({
    phase: 'done', mode, connections, concurrency, completed: times.length, failed,
    seconds: elapsed, per_second: times.length / elapsed,
    p50_ms: percentile(times, 0.5), p99_ms: percentile(times, 0.99),
    open: members.length - closed.length, closed, errors,
  })
  for (const m of members) m.terminate()
  return null
}

const budgets = { rooms: seconds + warmup + 2 * drainSeconds + 120, lifecycle: 600, storm: 600 }
const modes = { rooms, lifecycle, storm }
if (!modes[mode]) { console.error('rooms_loadgen: unknown mode ' + mode); process.exit(2) }
const timer = setTimeout(() => { console.error(`rooms_loadgen: ${mode} timed out`); process.exit(1) }, budgets[mode] * 1000)
modes[mode]().then((result) => {
  clearTimeout(timer)
  if (result) console.log(JSON.stringify(result))
  process.exit(0)
}, (e) => { console.error(e); process.exit(1) })
