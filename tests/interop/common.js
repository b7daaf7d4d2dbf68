'use strict';
// Shared set-up for the interop scenario scripts.
//
// Every scenario runs the *published* driftdb npm client (CommonJS) under Node
// with `ws` as its WebSocket, against a drifttrio server whose base URL is the
// first command-line argument. A scenario prints exactly one JSON line on
// stdout and exits 0; on any failure it prints the reason on stderr and exits
// non-zero. An overall timeout makes every script stop by itself.

globalThis.WebSocket = require('ws');
globalThis.window = globalThis; // StateListener debounces with window.setTimeout

// The client logs reconnect attempts with console.log; keep stdout for the
// result line only.
console.log = (...args) => console.error('[console.log]', ...args);

const driftdb = require('driftdb');

const TIMEOUT_MS = Number(process.env.INTEROP_TIMEOUT_MS || 20000);

function fail(message) {
  process.stderr.write(`FAIL: ${message}\n`);
  process.exit(1);
}

/** A promise with its resolve/reject functions exposed. */
function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Resolve once `predicate()` is true (checked every `everyMs`), or reject after `ms`. */
function waitUntil(predicate, label, ms = TIMEOUT_MS, everyMs = 5) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const check = () => {
      let ok = false;
      try {
        ok = predicate();
      } catch (err) {
        reject(err);
        return;
      }
      if (ok) {
        resolve();
      } else if (Date.now() - started > ms) {
        reject(new Error(`timed out waiting for ${label}`));
      } else {
        setTimeout(check, everyMs);
      }
    };
    check();
  });
}

/**
 * Open a DbConnection and record every message it receives (through the
 * client's own message listener, after its decoding) in `conn.received`.
 * An `error` message from the server fails the scenario at once.
 */
async function openConnection(socketUrl, cbor = false) {
  const db = new driftdb.DbConnection();
  const received = [];
  db.messageListener.addListener((message) => {
    received.push(message);
    // No scenario expects one: stop at once rather than wait for a timeout.
    if (message.type === 'error' && !db.allowErrors) {
      fail(`server sent an error to ${cbor ? 'a CBOR' : 'a JSON'} client: ${message.message}`);
    }
  });
  await db.connect(socketUrl, cbor);
  db.received = received;
  return db;
}

/** `error` messages a connection received from the server. */
function errorsOf(db) {
  return db.received.filter((m) => m.type === 'error').map((m) => m.message);
}

/**
 * Round trip through the server: resolves once every message this
 * connection sent before has been handled by the room (messages of one
 * connection are handled in order, and the pong comes after their replies).
 */
async function barrier(db) {
  const latency = db.testLatency();
  if (latency === null) throw new Error('testLatency() returned null: not connected');
  return latency;
}

/** POST a raw message to a room's http_url and return {status, body}. */
async function httpSend(httpUrl, message) {
  const response = await fetch(httpUrl, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(message),
  });
  return { status: response.status, body: await response.json() };
}

/** The room to use: a fresh one, or the one whose id is argv[3]. */
async function roomFromArgs(api) {
  const roomId = process.argv[3];
  return roomId ? api.getRoom(roomId) : api.newRoom();
}

/**
 * Run `main(baseUrl)`; print its result as one JSON line. `main` must close
 * what it opened: after the result is printed the process has 5 s to exit on
 * its own, or it fails (some socket or timer was left open).
 */
function run(main) {
  const baseUrl = process.argv[2];
  if (!baseUrl) fail('usage: node SCRIPT BASE_URL [ROOM_ID]');
  const overall = setTimeout(() => fail(`scenario timed out after ${TIMEOUT_MS} ms`), TIMEOUT_MS);
  process.on('unhandledRejection', (err) => fail(`unhandled rejection: ${err && err.stack ? err.stack : err}`));
  main(baseUrl).then(
    (result) => {
      clearTimeout(overall);
      process.stdout.write(JSON.stringify(result) + '\n');
      setTimeout(() => {
        process.stderr.write('FAIL: handles left open after the scenario finished\n');
        process.exit(3);
      }, 5000).unref();
    },
    (err) => fail(err && err.stack ? err.stack : String(err)),
  );
}

module.exports = {
  driftdb,
  barrier,
  deferred,
  errorsOf,
  fail,
  httpSend,
  openConnection,
  roomFromArgs,
  run,
  waitUntil,
};
