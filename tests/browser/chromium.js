'use strict';
// How the drivers start Chromium from Debian with playwright-core, and how they run.

const { chromium } = require('playwright-core');

// Chromium as root on a machine without internet: these flags or it hangs.
// (Playwright makes a fresh --user-data-dir itself and refuses one in args.)
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Each step (a wait, a click) times out after this long. */
const STEP_TIMEOUT_MS = Number(process.env.DRIVE_STEP_TIMEOUT_MS || 10000);

/** With DRIVE_TRACE set, log to stderr with a timestamp (the test shows it with -s). */
function trace(message) {
  if (process.env.DRIVE_TRACE) process.stderr.write(`[${new Date().toISOString()}] ${message}\n`);
}

/**
 * Run a driver: `main(config, launch)` with the JSON config given as argv[2], where
 * `launch(args)` starts Chromium (closed again if anything fails). Its result is
 * printed as one JSON line; a failure, or `timeoutMs` passing (DRIVE_TIMEOUT_MS
 * overrides it), is one FAIL line on stderr and exit code 1.
 */
function runDriver(script, timeoutMs, main) {
  let browser = null;
  const fail = (message) => {
    process.stderr.write(`FAIL: ${message}\n`);
    const exit = () => process.exit(1);
    if (browser) browser.close().then(exit, exit);
    else exit();
    setTimeout(exit, 3000).unref();
  };
  const launch = async (config, args = CHROMIUM_ARGS) => {
    browser = await chromium.launch({
      executablePath: config.chromium,
      headless: true,
      args,
      timeout: STEP_TIMEOUT_MS,
    });
    return browser;
  };
  const total = Number(process.env.DRIVE_TIMEOUT_MS || timeoutMs);
  const overall = setTimeout(() => fail(`timed out after ${total} ms`), total);
  process.on('unhandledRejection', (err) => fail(`unhandled rejection: ${err && err.stack ? err.stack : err}`));
  let config;
  try {
    config = JSON.parse(process.argv[2]);
  } catch (err) {
    fail(`usage: node ${script} CONFIG_JSON (${err})`);
    return;
  }
  main(config, launch).then(
    (result) => {
      clearTimeout(overall);
      process.stdout.write(JSON.stringify(result) + '\n');
    },
    (err) => fail(err && err.stack ? err.stack : String(err)),
  );
}

module.exports = { CHROMIUM_ARGS, STEP_TIMEOUT_MS, runDriver, trace };
