'use strict';
// Drive the browser app (index.html + the esbuild bundle of app.js) in
// headless Chromium with playwright-core, following a list of steps.
//
//   node drive.js '{"app": URL, "server": URL, "chromium": PATH, "steps": [...]}'
//
// `app` is where index.html is served; `server` is the drifttrio base URL the
// pages are given in their query string. Steps (run in order; `page` names a
// page, opened by an `open` step):
//
//   {"op": "open", "page": "a", "cbor": false}              create a room (Api.newRoom)
//   {"op": "open", "page": "b", "cbor": true, "room": "ID"}  join a room by id
//   {"op": "open", "page": "b", "room_of": "a"}              join page a's room
//   {"op": "push", "page": "a", "value": "<json text>"}      type it, click Push
//   {"op": "push_bytes", "page": "a", "hex": "deadbeef"}     type it, click Push bytes
//   {"op": "set_state", "page": "a", "value": "<json text>"} type it, click Set state
//   {"op": "wait_log", "page": "b", "count": 3}             until the log has 3 entries
//   {"op": "wait_state", "page": "b", "text": "<shown>"}     until the state shows this
//   {"op": "screenshot", "page": "b", "path": "x.png"}
//   {"op": "wait_log_text", "page": "b", "text": "..."}     until a log entry contains it
//
// The room inspector (served by drifttrio at /ui/):
//
//   {"op": "inspect", "page": "i", "room_of": "a"}          open it on a room (or "room")
//   {"op": "wait_key", "page": "i", "key": "chat", "retained": 2}  until the key shows n values
//   {"op": "wait_live", "page": "i", "count": 3}            until n live messages are listed
//   {"op": "inspect_push", "page": "i", "key": "k", "action": "append", "value": "<json>"}
//   {"op": "time_travel", "page": "i", "key": "k", "index": 0}  select the key, move the slider
//
// Prints one JSON line: for every page what its DOM shows (room, mode, status,
// state, log entries with their seq, frame counts, errors), anything a page
// logged as an error or warning, and each step's duration (timings_ms). Exits
// non-zero with the reason and every page's DOM on stderr if a step fails or
// times out (DRIVE_STEP_TIMEOUT_MS, 10 s); the whole run stops by itself after
// DRIVE_TIMEOUT_MS (30 s). DRIVE_TRACE=1 traces steps and console output on
// stderr.
const { STEP_TIMEOUT_MS, runDriver, trace } = require('./chromium');

async function snapshot(page) {
  return page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent;
    if (document.getElementById('keys')) {
      return {
        inspector: true,
        status: text('status'),
        state_attr: document.getElementById('status').dataset.state,
        room: text('room'),
        seq: text('seq'),
        keys: Array.from(document.querySelectorAll('#keys tbody tr'), (tr) => ({
          key: tr.dataset.key,
          retained: Number(tr.dataset.retained),
        })),
        live: Array.from(document.querySelectorAll('#live li'), (li) => li.textContent),
        live_entries: Array.from(document.querySelectorAll('#live li'), (li) => ({
          type: li.dataset.type,
          key: li.dataset.key,
          size: li.dataset.size === undefined ? null : Number(li.dataset.size),
          values: li.dataset.values === undefined ? null : Number(li.dataset.values),
          length: li.textContent.length,
        })),
        at_seq: text('at-seq'),
        value_at: text('value-at'),
        stream_at: Array.from(document.querySelectorAll('#stream-at li'), (li) => li.textContent),
        push_result: text('push-result'),
      };
    }
    return {
      status: text('status'),
      state_attr: document.getElementById('status').dataset.state,
      mode: text('mode'),
      room: text('room'),
      latency: text('latency'),
      frames: text('frames'),
      state: text('state'),
      log: Array.from(document.querySelectorAll('#log li'), (li) => ({
        seq: Number(li.dataset.seq),
        text: li.textContent,
      })),
      errors: Array.from(document.querySelectorAll('#errors li'), (li) => li.textContent),
    };
  });
}

async function main(config, launch) {
  const browser = await launch(config);
  const context = await browser.newContext({ viewport: { width: 760, height: 640 } });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const pages = {};
  const consoleErrors = {};

  // A page in a background tab gets its timers and animation frames
  // throttled (Playwright's actionability checks wait on those): bring the
  // page a step works on to the front first.
  let front = null;
  const pageOf = async (name) => {
    const page = pages[name];
    if (!page) throw new Error(`no page named ${name}`);
    if (front !== page) {
      await page.bringToFront();
      front = page;
    }
    return page;
  };

  const timings = [];
  for (const step of config.steps) {
    const label = JSON.stringify(step);
    const started = Date.now();
    try {
      switch (step.op) {
        case 'open': {
          const query = new URLSearchParams({ server: config.server });
          if (step.cbor) query.set('cbor', 'true');
          const room = step.room_of
            ? await (await pageOf(step.room_of)).textContent('#room')
            : step.room;
          if (room) query.set('room', room);
          pages[step.page] = await context.newPage();
          const page = await pageOf(step.page);
          const errors = (consoleErrors[step.page] = []);
          page.on('console', (msg) => {
            trace(`${step.page} console.${msg.type()}: ${msg.text()}`);
            if (msg.type() === 'error' || msg.type() === 'warning') errors.push(msg.text());
          });
          page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
          await page.goto(`${config.app}/index.html?${query}`);
          await page.waitForSelector('#status[data-state="ready"], #status[data-state="failed"]');
          if ((await page.getAttribute('#status', 'data-state')) !== 'ready') {
            throw new Error(`page ${step.page} did not start: ${await page.textContent('#status')}`);
          }
          break;
        }
        case 'push':
          await (await pageOf(step.page)).fill('#value', step.value);
          await (await pageOf(step.page)).click('#push');
          break;
        case 'push_bytes':
          await (await pageOf(step.page)).fill('#bytes', step.hex);
          await (await pageOf(step.page)).click('#push-bytes');
          break;
        case 'set_state':
          await (await pageOf(step.page)).fill('#state-input', step.value);
          await (await pageOf(step.page)).click('#set-state');
          break;
        case 'wait_log':
          await (await pageOf(step.page)).waitForFunction(
            (n) => document.querySelectorAll('#log li').length >= n,
            step.count,
            { polling: 20 },
          );
          break;
        case 'wait_state':
          await (await pageOf(step.page)).waitForFunction(
            (text) => document.getElementById('state').textContent === text,
            step.text,
            { polling: 20 },
          );
          break;
        case 'wait_log_text':
          await (await pageOf(step.page)).waitForFunction(
            (text) => Array.from(document.querySelectorAll('#log li')).some((li) => li.textContent.includes(text)),
            step.text,
            { polling: 20 },
          );
          break;
        case 'inspect': {
          const room = step.room_of
            ? await (await pageOf(step.room_of)).textContent('#room')
            : step.room;
          pages[step.page] = await context.newPage();
          const page = await pageOf(step.page);
          const errors = (consoleErrors[step.page] = []);
          page.on('console', (msg) => {
            trace(`${step.page} console.${msg.type()}: ${msg.text()}`);
            if (msg.type() === 'error' || msg.type() === 'warning') errors.push(msg.text());
          });
          page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
          await page.goto(`${config.server}/ui/?room=${encodeURIComponent(room)}`);
          await page.waitForSelector('#status[data-state="live"], #status[data-state="failed"]');
          if ((await page.getAttribute('#status', 'data-state')) !== 'live') {
            throw new Error(`inspector ${step.page} did not open: ${await page.textContent('#status')}`);
          }
          break;
        }
        case 'wait_key':
          await (await pageOf(step.page)).waitForFunction(
            ([key, n]) => Array.from(document.querySelectorAll('#keys tbody tr')).some(
              (tr) => tr.dataset.key === key && Number(tr.dataset.retained) >= n,
            ),
            [step.key, step.retained],
            { polling: 20 },
          );
          break;
        case 'wait_live':
          await (await pageOf(step.page)).waitForFunction(
            (n) => document.querySelectorAll('#live li').length >= n,
            step.count,
            { polling: 20 },
          );
          break;
        case 'inspect_push': {
          const page = await pageOf(step.page);
          await page.fill('#push-key', step.key);
          await page.selectOption('#push-action', step.action);
          if (step.seq !== undefined) await page.fill('#push-seq', String(step.seq));
          await page.fill('#push-value', step.value);
          await page.click('#push-send');
          break;
        }
        case 'time_travel': {
          const page = await pageOf(step.page);
          await page.click(`#keys tbody tr[data-key="${step.key}"]`);
          await page.$eval(
            '#seq-slider',
            (el, index) => {
              el.value = String(index);
              el.dispatchEvent(new Event('input'));
            },
            step.index,
          );
          break;
        }
        case 'screenshot':
          await (await pageOf(step.page)).screenshot({ path: step.path, fullPage: true });
          break;
        default:
          throw new Error(`unknown op ${step.op}`);
      }
      timings.push([`${step.op} ${step.page}`, Date.now() - started]);
      trace(`done ${label}`);
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
  }

  const result = { pages: {}, console_errors: consoleErrors, timings_ms: timings };
  for (const [name, page] of Object.entries(pages)) result.pages[name] = await snapshot(page);
  await browser.close();
  return result;
}

runDriver('drive.js', 30000, main);
