'use strict';
// How the drivers start Chromium from Debian with playwright-core.

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

module.exports = { CHROMIUM_ARGS };
