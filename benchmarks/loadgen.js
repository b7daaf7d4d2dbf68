// Load generator for any DriftDB server: one room, one publisher keeping WINDOW
// pushes in flight, M subscribers; prints one JSON line with messages delivered/s.
//
//   node loadgen.js --url http://127.0.0.1:8080 --subscribers 10 --seconds 5
'use strict'
const WebSocket = require('ws')

function arg(name, dflt) {
  const i = process.argv.indexOf('--' + name)
  return i >= 0 ? process.argv[i + 1] : dflt
}
const base = arg('url', 'http://127.0.0.1:8080').replace(/\/$/, '')
const M = Number(arg('subscribers', '10'))
const seconds = Number(arg('seconds', '5'))
const warmup = Number(arg('warmup', '1'))
const windowSize = Number(arg('window', '100'))
const action = arg('action', 'relay')

function open(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false })
    ws.once('open', () => resolve(ws))
    ws.once('error', reject)
  })
}

async function main() {
  const room = await (await fetch(base + '/new', { method: 'POST' })).json()
  const subs = []
  let delivered = 0
  let counting = false
  for (let i = 0; i < M; i++) {
    const ws = await open(room.socket_url)
    ws.on('message', () => { if (counting) delivered++ })
    subs.push(ws)
  }
  // The publisher is not counted as a subscriber; it counts its own echoes to
  // keep a window of pushes in flight.
  const pub = await open(room.socket_url)
  const payload = JSON.stringify({ type: 'push', key: 'bench', action: { type: action }, value: { n: 0, text: 'hello world' } })
  let inFlight = 0
  let stopped = false
  function fill() {
    while (!stopped && inFlight < windowSize) {
      inFlight++
      pub.send(payload)
    }
  }
  pub.on('message', () => { inFlight--; fill() })
  fill()
  await new Promise(r => setTimeout(r, warmup * 1000))
  counting = true
  const t0 = process.hrtime.bigint()
  await new Promise(r => setTimeout(r, seconds * 1000))
  counting = false
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9
  stopped = true
  for (const ws of [...subs, pub]) ws.terminate()
  console.log(JSON.stringify({ subscribers: M, seconds: elapsed, delivered, per_second: delivered / elapsed }))
}

const timer = setTimeout(() => { console.error('loadgen: timed out'); process.exit(1) }, (seconds + warmup + 30) * 1000)
main().then(() => { clearTimeout(timer); process.exit(0) }, (e) => { console.error(e); process.exit(1) })
