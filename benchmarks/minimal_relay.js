// A minimal DriftDB-style relay on Node's `ws`, as a yardstick: POST /new,
// WebSocket /room/ID/connect, every push relayed to the room with a seq; ping is
// answered with pong and get with an empty init (nothing is retained).
// No retention, no validation, no limits: a ceiling, not a competitor.
'use strict'
const http = require('http')
const crypto = require('crypto')
const WebSocket = require('ws')

const rooms = new Map()
const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/new') {
    const id = crypto.randomBytes(16).toString('base64url')
    rooms.set(id, { seq: 0, members: new Set() })
    const host = req.headers.host
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ room: id, socket_url: `ws://${host}/room/${id}/connect`, http_url: `http://${host}/room/${id}/send` }))
    return
  }
  res.writeHead(404); res.end()
})
const wss = new WebSocket.Server({ noServer: true, perMessageDeflate: false })
server.on('upgrade', (req, socket, head) => {
  const m = /^\/room\/([^/?]+)\/connect/.exec(req.url)
  const room = m && rooms.get(m[1])
  if (!room) { socket.destroy(); return }
  wss.handleUpgrade(req, socket, head, (ws) => {
    room.members.add(ws)
    ws.on('close', () => room.members.delete(ws))
    ws.on('message', (data) => {
      const msg = JSON.parse(data)
      if (msg.type === 'push') {
        const out = JSON.stringify({ type: 'push', key: msg.key, value: msg.value, seq: ++room.seq })
        for (const m of room.members) m.send(out)
      } else if (msg.type === 'ping') {
        ws.send(JSON.stringify({ type: 'pong', nonce: msg.nonce ?? null }))
      } else if (msg.type === 'get') {
        ws.send(JSON.stringify({ type: 'init', key: msg.key, data: [] }))
      }
    })
  })
})
server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  console.error(`listening on http://127.0.0.1:${server.address().port}`)
})
