// Driver for benchmarks/redis_cost.py where loadgen.js does not fit: ROOMS rooms,
// each with one publisher keeping WINDOW pushes in flight and M subscribers. The
// rooms are created on --url and the publishers are members there; the subscribers
// are members through --sub-url (default: the same node). With two drifttrio nodes
// on one Redis, --sub-url pointing at node 2 makes every push cross Redis (script +
// pub/sub) before node 2 fans it out. Prints one JSON line with the fields of
// loadgen.js's throughput mode (delivered = messages to the subscribers of all
// rooms in the measured window; final_seq = the rooms' last seqs added up, i.e.
// every push of the run), and checks that every member of every room saw seqs
// 1, 2, 3, ... with no gap, duplicate or reordering up to its room's last seq.
//
//   node redis_rooms.js --url http://127.0.0.1:8001 --sub-url http://127.0.0.1:8002 \
//        --subscribers 10 --seconds 4
//   node redis_rooms.js --url http://127.0.0.1:8001 --rooms 100 --subscribers 4 --window 1
'use strict'
const WebSocket = require('ws')

function arg(name, dflt) {
  const i = process.argv.indexOf('--' + name)
  return i >= 0 ? process.argv[i + 1] : dflt
}
const base = arg('url', 'http://127.0.0.1:8080').replace(/\/$/, '')
const subBase = arg('sub-url', base).replace(/\/$/, '')
const M = Number(arg('subscribers', '10'))
const seconds = Number(arg('seconds', '5'))
const warmup = Number(arg('warmup', '1'))
const windowSize = Number(arg('window', '100'))
const drainSeconds = Number(arg('drain', '10'))
const roomCount = Number(arg('rooms', '1'))

const sleep = (ms) => new Promise(r => setTimeout(r, ms))

function open(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false })
    ws.once('open', () => resolve(ws))
    ws.once('error', reject)
  })
}

// The seq of a broadcast read from the frame's bytes (see loadgen.js); -1 if none.
const SEQ = Buffer.from('"seq"')
function seqOf(buf) {
  let i = buf.lastIndexOf(SEQ)
  if (i < 0) return -1
  i += SEQ.length
  while (i < buf.length && (buf[i] === 0x3a || buf[i] === 0x20)) i++
  let n = -1
  for (; i < buf.length; i++) {
    const c = buf[i] - 0x30
    if (c < 0 || c > 9) break
    n = (n < 0 ? 0 : n * 10) + c
  }
  return n
}

class Member {
  constructor(ws) {
    this.ws = ws
    this.next = 1
    this.lost = 0
    this.reordered = 0
    this.other = 0
    this.samples = []
    this.closed = null
    this.waiting = null
    this.onPush = null
    ws.on('message', (data) => this.message(data))
    ws.on('close', (code) => { if (!this.terminated) this.closed = code })
    ws.on('error', () => {})
  }

  message(data) {
    const seq = seqOf(data)
    if (seq < 0) {
      let msg
      try { msg = JSON.parse(data) } catch (e) { msg = { type: 'unparsable' } }
      if (this.waiting) { const w = this.waiting; this.waiting = null; w(msg); return }
      this.other++
      if (this.samples.length < 3) this.samples.push(msg)
      return
    }
    if (seq === this.next) this.next++
    else if (seq > this.next) { this.lost += seq - this.next; this.next = seq + 1 } else this.reordered++
    if (this.onPush) this.onPush()
  }

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

async function newRoom() {
  const res = await fetch(base + '/new', { method: 'POST' })
  if (!res.ok) throw new Error(`POST /new: ${res.status}`)
  return res.json()
}

const payload = JSON.stringify({ type: 'push', key: 'bench', action: { type: 'relay' }, value: { n: 0, text: 'hello world' } })

// One room: its subscribers (through subBase) and its publisher (through base).
class Room {
  constructor() {
    this.subs = []
    this.pub = null
    this.inFlight = 0
    this.stopped = false
  }

  async open(count) {
    const room = await newRoom()
    // The same room through the subscribers' node: keep the path, swap host and port.
    const viaSubNode = new URL(room.socket_url)
    viaSubNode.host = new URL(subBase).host
    for (let i = 0; i < M; i++) {
      const sub = new Member(await open(viaSubNode.toString()))
      // A connection is surely a member once its first request is answered.
      await sub.request({ type: 'ping', nonce: i })
      sub.onPush = count
      this.subs.push(sub)
    }
    this.pub = new Member(await open(room.socket_url))
    await this.pub.request({ type: 'ping', nonce: M })
    this.pub.onPush = () => { this.inFlight--; this.fill() }
  }

  fill() {
    while (!this.stopped && this.inFlight < windowSize) {
      this.inFlight++
      this.pub.ws.send(payload)
    }
  }

  members() { return [...this.subs, this.pub] }
}

async function main() {
  let delivered = 0
  let counting = false
  const count = () => { if (counting) delivered++ }
  const rooms = []
  for (let r = 0; r < roomCount; r++) {
    const room = new Room()
    await room.open(count)
    rooms.push(room)
  }
  // Nobody publishes before every member of every room has joined.
  for (const room of rooms) room.fill()
  await sleep(warmup * 1000)
  counting = true
  const t0 = process.hrtime.bigint()
  await sleep(seconds * 1000)
  counting = false
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9
  for (const room of rooms) room.stopped = true
  // Drain: each publisher gets the echoes of its last pushes, which fixes its room's
  // last seq; every member must then reach it.
  const all = rooms.flatMap(room => room.members())
  const echoed = await until(
    () => rooms.every(room => room.inFlight <= 0 || room.pub.closed !== null), drainSeconds * 1000)
  const finals = rooms.map(room => Math.max(...room.members().map(s => s.last())))
  await until(() => rooms.every((room, i) =>
    room.members().every(s => s.closed !== null || s.last() >= finals[i])), drainSeconds * 1000)
  let lost = 0
  let reordered = 0
  let other = 0
  const closed = []
  const samples = []
  rooms.forEach((room, i) => {
    for (const s of room.members()) {
      lost += s.lost + Math.max(0, finals[i] - s.last()) // a gap, or never got the last ones
      reordered += s.reordered
      other += s.other
      if (s.closed !== null) closed.push(s.closed)
      for (const o of s.samples) if (samples.length < 3) samples.push(o)
    }
  })
  for (const s of all) s.terminate()
  return {
    mode: 'rooms', rooms: roomCount, subscribers: M, seconds: elapsed, delivered,
    per_second: delivered / elapsed, final_seq: finals.reduce((a, b) => a + b, 0),
    drained: echoed, lost, reordered, other, closed, samples,
  }
}

const timer = setTimeout(() => { console.error('redis_rooms: timed out'); process.exit(1) },
  (seconds + warmup + 2 * drainSeconds + 120) * 1000)
main().then((result) => {
  clearTimeout(timer)
  console.log(JSON.stringify(result))
  process.exit(0)
}, (e) => { console.error(e); process.exit(1) })
