'use strict';
// Build the browser app into OUTDIR: index.html, and app.js bundled with the
// driftdb npm client it imports. Serve OUTDIR over HTTP and open
// index.html?server=http://127.0.0.1:8080 to use it by hand.
//
//   node build.js OUTDIR        (npm run build: dist/)
//
// Uses esbuild's JS API, which works whether or not npm ran esbuild's
// install script.
const fs = require('fs');
const path = require('path');
const esbuild = require('esbuild');

const outdir = process.argv[2];
if (!outdir) {
  process.stderr.write('usage: node build.js OUTDIR\n');
  process.exit(2);
}
fs.mkdirSync(outdir, { recursive: true });
fs.copyFileSync(path.join(__dirname, 'index.html'), path.join(outdir, 'index.html'));
esbuild
  .build({
    entryPoints: [path.join(__dirname, 'app.js')],
    bundle: true,
    format: 'iife',
    target: 'es2020',
    platform: 'browser',
    outfile: path.join(outdir, 'app.js'),
    logLevel: 'warning',
  })
  .catch(() => process.exit(1)); // esbuild has printed the errors
