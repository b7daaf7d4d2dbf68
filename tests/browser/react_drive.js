'use strict';
// Drive the React app (react.html + the production bundle of react/app.jsx,
// on driftdb-react 1.0.12) in headless Chromium with playwright-core: three
// pages in one room (alice and bob in JSON, carol in CBOR), as users would use
// them, then joins while another page dispatches (issue 17).
//
//   node react_drive.js '{"app": URL, "server": URL, "chromium": PATH,
//                         "paces": [8, 50, 100], "joins": 10}'
//
// At each pace alice dispatches to the shared reducer every PACE ms while bob
// and carol each open `joins` more connections to the room (a fresh
// DriftDBProvider with useSharedReducer each, one every ~1.5 paces); at 8 ms a
// whole new page (dave) also loads. When the dispatching stops, every
// connection's reducer state is compared with alice's.
//
// Prints one JSON line with what the pages showed; exits non-zero with the
// reason (and what every page showed) on stderr if a step fails or times out.
// DRIVE_TRACE=1 traces the steps on stderr.
const { CHROMIUM_ARGS, STEP_TIMEOUT_MS, runDriver, trace } = require('./chromium');

// Several pages work at once here: none of them may be throttled as a background tab.
const ARGS = [
  ...CHROMIUM_ARGS,
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];

// RoomQRCode shows an <img> from this service; the test has no internet, so the
// browser is answered locally, and the test checks which URL the code encodes.
const QR_SERVICE = 'https://api.jamsocket.live/**';
const QR_IMAGE = '<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** What a page shows. */
function snapshot(page) {
  return page.evaluate(() => {
    const text = (id) => document.getElementById(id)?.textContent ?? null;
    const qr = document.querySelector('#qr img');
    return {
      url: window.location.href,
      status: text('status'),
      latency: text('latency'),
      client_id: text('client-id'),
      indicator: text('indicator'),
      shared_text: text('shared-text'),
      count: Number(text('count')),
      first: text('first'),
      presence: Array.from(document.querySelectorAll('#presence li'), (li) => li.textContent),
      qr_src: qr ? qr.getAttribute('src') : null,
    };
  });
}

async function main(config, launch) {
  const browser = await launch(config, ARGS);
  const context = await browser.newContext({ viewport: { width: 760, height: 900 } });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const qrRequests = [];
  await context.route(QR_SERVICE, (route) => {
    qrRequests.push(route.request().url());
    return route.fulfill({ status: 200, contentType: 'image/svg+xml', body: QR_IMAGE });
  });

  const pages = {};
  const consoleErrors = {};
  const timings = [];
  let roomId = null;
  const step = async (label, action) => {
    const started = Date.now();
    trace(`start ${label}`);
    try {
      const value = await action();
      timings.push([label, Date.now() - started]);
      return value;
    } catch (err) {
      const seen = {};
      for (const [name, page] of Object.entries(pages)) {
        seen[name] = await snapshot(page).catch((e) => String(e));
      }
      throw new Error(
        `step ${label} failed: ${err && err.message ? err.message : err}\n` +
          `pages: ${JSON.stringify(seen)}\nconsole: ${JSON.stringify(consoleErrors)}`,
      );
    }
  };

  const open = async (name, { cbor = false } = {}) => {
    const query = new URLSearchParams({ server: config.server, name });
    if (cbor) query.set('cbor', 'true');
    if (roomId) query.set('_driftdb_room', roomId);
    const page = await context.newPage();
    const errors = (consoleErrors[name] = []);
    page.on('console', (msg) => {
      trace(`${name} console.${msg.type()}: ${msg.text()}`);
      if (msg.type() === 'error' || msg.type() === 'warning') errors.push(msg.text());
    });
    page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
    // The npm client logs only the type of a message it does not know ("Unknown
    // message type error"): keep the server's words, so a failure says why.
    page.on('websocket', (ws) => {
      ws.on('framereceived', ({ payload }) => {
        const text = typeof payload === 'string' ? payload : '';
        if (text.includes('"type":"error"')) errors.push(`server error frame: ${text.slice(0, 300)}`);
      });
    });
    pages[name] = page;
    await page.goto(`${config.app}/react.html?${query}`);
    await connected(page);
    return page;
  };
  const connected = (page) => page.waitForSelector('#status[data-connected="true"]');
  const waitText = (page, id, text) =>
    page.waitForFunction(([i, t]) => document.getElementById(i)?.textContent === t, [id, text], {
      polling: 20,
    });
  const waitPresence = (page, names) =>
    page.waitForFunction(
      (want) =>
        JSON.stringify(Array.from(document.querySelectorAll('#presence li'), (li) => li.textContent)) ===
        JSON.stringify(want),
      names,
      { polling: 50 },
    );
  // The pong of a ping comes after every push the room sent this connection before.
  const barrierMain = (page) => page.evaluate(() => app.db.testLatency());
  const reducerState = (page) => page.evaluate(() => app.state());

  const result = { pages: {}, console_errors: consoleErrors, timings_ms: timings };

  // -- three pages in one room ---------------------------------------------------------
  const alice = await step('open alice', () => open('alice'));
  roomId = new URL(alice.url()).searchParams.get('_driftdb_room');
  result.room = roomId;
  const bob = await step('open bob', () => open('bob'));
  const carol = await step('open carol (CBOR)', () => open('carol', { cbor: true }));

  await step('shared state, both ways', async () => {
    await alice.fill('#text-input', 'hello from alice');
    await alice.click('#set-text');
    await waitText(bob, 'shared-text', 'hello from alice');
    await waitText(carol, 'shared-text', 'hello from alice');
    await carol.fill('#text-input', 'hi from carol');
    await carol.click('#set-text');
    await waitText(alice, 'shared-text', 'hi from carol');
    await waitText(bob, 'shared-text', 'hi from carol');
  });

  await step('presence appears', async () => {
    await waitPresence(alice, ['bob', 'carol']);
    await waitPresence(bob, ['alice', 'carol']);
    await waitPresence(carol, ['alice', 'bob']);
  });

  result.concurrent = await step('reducer under concurrent dispatch', async () => {
    // alice and bob dispatch at once; then carol adds one by hand. (The npm
    // Reducer shows its own actions optimistically and replaces them with the
    // confirmed state when another client's action arrives: a page's display is
    // final once the last action is someone else's.)
    const each = 20;
    await Promise.all(
      [alice, bob].map((page, p) =>
        page.evaluate(
          async ([n, who]) => {
            for (let i = 0; i < n; i++) {
              app.dispatch({ type: 'add', id: `${who}${i}` });
              await new Promise((resolve) => setTimeout(resolve, 1));
            }
          },
          [each, 'ab'[p]],
        ),
      ),
    );
    await Promise.all([alice, bob].map(barrierMain));
    await carol.click('#add');
    const total = 2 * each + 1;
    for (const page of [alice, bob, carol]) await waitText(page, 'count', String(total));
    await Promise.all([alice, bob, carol].map(barrierMain));
    const states = await Promise.all([alice, bob, carol].map(reducerState));
    return {
      total,
      counts: states.map((s) => s.count),
      same: states.every((s) => JSON.stringify(s) === JSON.stringify(states[0])),
    };
  });

  result.latency = await step('latency', async () => {
    // useLatency measures every 5 s from the page's start.
    for (const page of [alice, bob, carol]) {
      await page.waitForFunction(() => document.getElementById('latency').textContent !== '', null, {
        polling: 100,
      });
    }
    return Promise.all([alice, bob, carol].map((page) => page.textContent('#latency')));
  });

  // -- joins while alice dispatches (issue 17) -------------------------------------------
  result.joins = [];
  for (const pace of config.paces) {
    result.joins.push(
      await step(`joins at ${pace} ms`, async () => {
        await alice.evaluate((ms) => {
          let n = 0;
          app.dispatching = setInterval(() => app.dispatch({ type: 'add', id: `p${ms}-${++n}` }), ms);
        }, pace);
        const joinEvery = Math.max(40, Math.round(pace * 1.5) + 7);
        const joinMany = (page) =>
          page.evaluate(
            async ([room, n, every]) => {
              const opened = [];
              for (let i = 0; i < n; i++) {
                await new Promise((resolve) => setTimeout(resolve, every));
                opened.push(app.join(room));
              }
              return opened;
            },
            [roomId, config.joins, joinEvery],
          );
        const pageJoin = pace === config.paces[0];
        const [fromBob, fromCarol, dave] = await Promise.all([
          joinMany(bob),
          joinMany(carol),
          pageJoin ? sleep(joinEvery * 3).then(() => open('dave')) : null,
        ]);
        await alice.evaluate(() => clearInterval(app.dispatching));
        await barrierMain(alice);
        const expected = await reducerState(alice);
        const check = (page, indexes) =>
          page.evaluate(async (wanted) => {
            await app.settle(); // every connection asked for is rendered
            const joined = wanted.map((i) => app.joiners[i]);
            for (const j of joined) {
              // Its first frame for the key is in, and the room's last push has reached it.
              await j.firstFrame;
              await j.db.testLatency();
            }
            await app.settle();
            return joined.map((j) => ({ first: j.first, state: j.state }));
          }, indexes);
        const joined = [...(await check(bob, fromBob)), ...(await check(carol, fromCarol))];
        if (dave) {
          await barrierMain(dave);
          joined.push({ first: 'page', state: await reducerState(dave) });
        }
        await Promise.all([bob, carol].map((page) => page.evaluate(() => app.leaveAll())));
        const same = (s) => JSON.stringify(s) === JSON.stringify(expected);
        return {
          pace_ms: pace,
          expected_count: expected.count,
          tried: joined.length,
          truncated: joined.filter((j) => !same(j.state)).length,
          first_frames: joined.map((j) => j.first),
          counts: joined.map((j) => j.state.count),
          first_actions: joined.map((j) => j.state.log[0]),
          expected_first: expected.log[0],
        };
      }),
    );
  }
  if (pages.dave) {
    await pages.dave.close();
    delete pages.dave;
  }

  // -- reload, and a page that leaves --------------------------------------------------
  result.reload = await step('reload bob', async () => {
    const before = await snapshot(bob);
    await bob.reload();
    await connected(bob);
    await barrierMain(bob);
    await waitText(bob, 'shared-text', 'hi from carol');
    await barrierMain(alice);
    const expected = await reducerState(alice);
    await waitText(bob, 'count', String(expected.count));
    const after = await snapshot(bob);
    return {
      same_client_id: before.client_id === after.client_id,
      same_url: before.url === after.url,
      state_equal: JSON.stringify(await reducerState(bob)) === JSON.stringify(expected),
    };
  });

  await step('carol leaves', async () => {
    await carol.close();
    delete pages.carol;
    await waitPresence(alice, ['bob']);
    await waitPresence(bob, ['alice']);
  });

  for (const [name, page] of Object.entries(pages)) result.pages[name] = await snapshot(page);
  result.qr_requests = qrRequests;
  await browser.close();
  return result;
}

runDriver('react_drive.js', 55000, main);
