'use strict';
// Build the browser apps into OUTDIR:
//   index.html + app.js      app.js bundled with the driftdb npm client it imports
//   react.html + react.js    react/app.jsx, a React 18 app on driftdb-react,
//                            bundled in production mode (as an app ships)
// Serve OUTDIR over HTTP and open index.html?server=http://127.0.0.1:8080 (or
// react.html?server=...) to use them by hand.
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
fs.copyFileSync(path.join(__dirname, 'react', 'index.html'), path.join(outdir, 'react.html'));
const common = { bundle: true, format: 'iife', target: 'es2020', platform: 'browser', logLevel: 'warning' };
Promise.all([
  esbuild.build({
    ...common,
    entryPoints: [path.join(__dirname, 'app.js')],
    outfile: path.join(outdir, 'app.js'),
  }),
  esbuild.build({
    ...common,
    entryPoints: [path.join(__dirname, 'react', 'app.jsx')],
    outfile: path.join(outdir, 'react.js'),
    jsx: 'automatic',
    minify: true,
    define: { 'process.env.NODE_ENV': '"production"' },
  }),
]).catch(() => process.exit(1)); // esbuild has printed the errors
