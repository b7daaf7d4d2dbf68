// Load generator for any DriftDB server (drifttrio, the minimal relays). Three modes,
// each printing one JSON line on stdout:
//
//   throughput (default): one room, one publisher keeping WINDOW pushes in flight,
//     M subscribers; messages delivered per second to the subscribers, and a check
//     that every member (subscribers and the publisher's own echoes) saw seqs 1, 2,
//     3, ... with no gap, duplicate or reordering up to the room's last seq.
//   latency: one connection, sequential ping -> pong round trips (after a warmup);
//     p50, p99, mean, min, max in microseconds.
//   idle: opens one connection per room in ROOMS rooms (so each room is live), prints
//     {"phase":"baseline"} and waits for a line on stdin; then opens CONNECTIONS more
//     connections spread over those rooms, each sending a `get` and waiting for its
//     answer, prints {"phase":"ready",...} and waits for a line on stdin (or EOF)
//     before closing everything. The caller reads the server's RSS at both points.
//
//   node loadgen.js --url http://127.0.0.1:8080 --subscribers 10 --seconds 5
//   node loadgen.js --url http://127.0.0.1:8080 --mode latency --pings 2000
//   node loadgen.js --url http://127.0.0.1:8080 --mode idle --connections 1000 --rooms 10
'use strict'
const WebSocket = require('ws')
const readline = require('readline')

function arg(name, dflt) {
  const i = process.argv.indexOf('--' + name)
  return i >= 0 ? process.argv[i + 1] : dflt
}
const base = arg('url', 'http://127.0.0.1:8080').replace(/\/$/, '')
const mode = arg('mode', 'throughput')
const M = Number(arg('subscribers', '10'))
const seconds = Number(arg('seconds', '5'))
const warmup = Number(arg('warmup', '1'))
const windowSize = Number(arg('window', '100'))
const action = arg('action', 'relay')
const pings = Number(arg('pings', '2000'))
const warmupPings = Number(arg('warmup-pings', '200'))
const connections = Number(arg('connections', '1000'))
const roomCount = Number(arg('rooms', '10'))
const drainSeconds = Number(arg('drain', '10'))

const sleep = (ms) => new Promise(r => setTimeout(r, ms))

async function newRoom() {
  const res = await fetch(base + '/new', { method: 'POST' })
  if (!res.ok) throw new Error(`POST /new: ${res.status}`)
  return res.json()
}

function open(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false })
    ws.once('open', () => resolve(ws))
    ws.once('error', reject)
  })
}

// The seq of a broadcast, read straight from the frame's bytes: `"seq"` followed by
// digits (JSON.parse on every frame would make the load generator the bottleneck).
// -1 when the frame has no numeric seq (pong, init, error, ...). The payload this
// generator pushes never contains "seq", so the last occurrence is the message's.
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

// Tracks one member's view of the room: the next seq it must see, and what went wrong.
class Member {
  constructor(ws, label) {
    this.ws = ws
    this.label = label
    this.next = 1 // the room is fresh: the first broadcast is seq 1
    this.lost = 0 // seqs skipped over (a gap)
    this.reordered = 0 // a seq at or below one already seen (duplicate or out of order)
    this.other = 0 // messages that are neither a broadcast nor an awaited reply
    this.samples = [] // the first few of them
    this.closed = null // close code, when the server closed the connection
    this.waiting = null // resolves on the next non-broadcast message
    this.onPush = null
    ws.on('message', (data) => this.message(data))
    ws.on('close', (code) => { if (!this.terminated) this.closed = code })
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

  // Sends msg and resolves with the next message that is not a broadcast.
  request(msg) {
    return new Promise((resolve) => { this.waiting = resolve; this.ws.send(JSON.stringify(msg)) })
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

async function throughput() {
  const room = await newRoom()
  const subs = []
  let delivered = 0
  let counting = false
  const count = () => { if (counting) delivered++ }
  for (let i = 0; i < M; i++) {
    const sub = new Member(await open(room.socket_url), 'sub' + i)
    // A connection is surely a member once its first request is answered.
    await sub.request({ type: 'ping', nonce: i })
    sub.onPush = count
    subs.push(sub)
  }
  // The publisher is not counted as a subscriber; it counts its own echoes to
  // keep a window of pushes in flight.
  const pub = new Member(await open(room.socket_url), 'pub')
  await pub.request({ type: 'ping', nonce: M })
  const payload = JSON.stringify({ type: 'push', key: 'bench', action: { type: action }, value: { n: 0, text: 'hello world' } })
  let inFlight = 0
  let stopped = false
  function fill() {
    while (!stopped && inFlight < windowSize) {
      inFlight++
      pub.ws.send(payload)
    }
  }
  pub.onPush = () => { inFlight--; fill() }
  fill()
  await sleep(warmup * 1000)
  counting = true
  const t0 = process.hrtime.bigint()
  await sleep(seconds * 1000)
  counting = false
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9
  stopped = true
  // Drain: the publisher gets the echoes of its last pushes, which fixes the room's
  // last seq; every subscriber must then reach that seq.
  const all = [...subs, pub]
  const live = () => all.filter(s => s.closed === null)
  const echoed = await until(() => inFlight <= 0 || pub.closed !== null, drainSeconds * 1000)
  const finalSeq = Math.max(...all.map(s => s.last()))
  await until(() => live().every(s => s.last() >= finalSeq), drainSeconds * 1000)
  let lost = 0
  let reordered = 0
  let other = 0
  const closed = []
  const samples = []
  for (const s of all) {
    lost += s.lost + Math.max(0, finalSeq - s.last()) // a gap, or never got the last ones
    reordered += s.reordered
    other += s.other
    if (s.closed !== null) closed.push(s.closed)
    for (const o of s.samples) if (samples.length < 3) samples.push(o)
  }
  for (const s of all) s.terminate()
  return {
    mode, subscribers: M, seconds: elapsed, delivered, per_second: delivered / elapsed,
    final_seq: finalSeq, drained: echoed, lost, reordered, other, closed, samples,
  }
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]
}

async function latency() {
  const room = await newRoom()
  const member = new Member(await open(room.socket_url), 'ping')
  const rtts = []
  for (let i = 0; i < warmupPings + pings; i++) {
    const t0 = process.hrtime.bigint()
    const reply = await member.request({ type: 'ping', nonce: i })
    const us = Number(process.hrtime.bigint() - t0) / 1e3
    if (reply.type !== 'pong' || reply.nonce !== i) throw new Error('expected pong ' + i + ', got ' + JSON.stringify(reply))
    if (i >= warmupPings) rtts.push(us)
  }
  member.terminate()
  rtts.sort((a, b) => a - b)
  return {
    mode, pings: rtts.length,
    p50_us: percentile(rtts, 0.5), p99_us: percentile(rtts, 0.99),
    mean_us: rtts.reduce((a, b) => a + b, 0) / rtts.length, min_us: rtts[0], max_us: rtts[rtts.length - 1],
  }
}

async function idle() {
  const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]()
  const rooms = []
  const members = []
  async function join(room) {
    const member = new Member(await open(room.socket_url), 'idle')
    // A `get` makes it a subscriber of the key (drifttrio answers with an `init`);
    // waiting for the answer means the server has fully set the connection up.
    await member.request({ type: 'get', key: 'bench', seq: 0 })
    members.push(member)
  }
  for (let i = 0; i < roomCount; i++) {
    rooms.push(await newRoom())
    await join(rooms[i])
  }
  console.log(JSON.stringify({ phase: 'baseline', connections: members.length }))
  await lines.next()
  const batch = 50
  for (let i = 0; i < connections; i += batch) {
    const joins = []
    for (let j = i; j < Math.min(connections, i + batch); j++) joins.push(join(rooms[j % roomCount]))
    await Promise.all(joins)
  }
  const closed = members.filter(m => m.closed !== null).length
  console.log(JSON.stringify({ phase: 'ready', connections: members.length - roomCount, rooms: roomCount, closed }))
  await lines.next()
  for (const m of members) m.terminate()
  return null
}

const budget = mode === 'throughput' ? seconds + warmup + 2 * drainSeconds + 60 : mode === 'latency' ? 120 : 600
const timer = setTimeout(() => { console.error(`loadgen: ${mode} timed out`); process.exit(1) }, budget * 1000)
const modes = { throughput, latency, idle }
if (!modes[mode]) { console.error('loadgen: unknown mode ' + mode); process.exit(2) }
modes[mode]().then((result) => {
  clearTimeout(timer)
  if (result) console.log(JSON.stringify(result))
  process.exit(0)
}, (e) => { console.error(e); process.exit(1) })
