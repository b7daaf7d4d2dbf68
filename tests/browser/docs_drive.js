'use strict';
// Measure the built documentation's tables in headless Chromium.
//
//   node docs_drive.js '{"site": URL, "chromium": PATH, "width": 1280, "height": 800,
//                        "pages": ["quickstart/"], "screenshot": PATH,
//                        "screenshot_heading": "Environment variables"}'
//
// For every table on each page: its heading, its header cells, how wide it is
// (scrollWidth) against the box that holds it (clientWidth of its parent, which
// is where a theme puts a horizontal scrollbar), and the right edge of its last
// column against the viewport. The viewport showing the table under
// `screenshot_heading` on the first page is saved as a screenshot. Prints one JSON line; see
// chromium.js for failures and timeouts.
const { STEP_TIMEOUT_MS, runDriver } = require('./chromium');

async function main(config, launch) {
  const browser = await launch(config);
  const context = await browser.newContext({ viewport: { width: config.width, height: config.height } });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  // No internet in tests: the theme's highlight.js from a CDN fails at once.
  await context.route((url) => !url.href.startsWith(config.site), (route) => route.abort());
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
  const pages = {};
  for (const path of config.pages) {
    await page.goto(new URL(path, config.site).href, { waitUntil: 'load' });
    pages[path] = {
      page_scroll_width: await page.evaluate(() => document.documentElement.scrollWidth),
      viewport_width: await page.evaluate(() => window.innerWidth),
      tables: await page.$$eval('table', (tables) =>
        tables.map((table, index) => {
          let heading = null;
          for (let el = table.closest('div') || table; el && !heading; el = el.previousElementSibling) {
            if (/^H[1-6]$/.test(el.tagName)) heading = el.textContent.replace(/¶$/, '').trim();
          }
          const holder = table.parentElement;
          let lastRight = 0;
          for (const row of table.rows) {
            const cell = row.cells[row.cells.length - 1];
            lastRight = Math.max(lastRight, cell.getBoundingClientRect().right);
          }
          table.dataset.index = String(index);
          return {
            index,
            heading,
            columns: Array.from(table.rows[0].cells, (cell) => cell.textContent.trim()),
            rows: table.rows.length,
            scroll_width: table.scrollWidth,
            holder_client_width: holder.clientWidth,
            holder_scroll_width: holder.scrollWidth,
            last_column_right: lastRight,
          };
        }),
      ),
    };
    const shot = pages[path].tables.find((t) => t.heading === config.screenshot_heading);
    if (config.screenshot && path === config.pages[0] && shot) {
      // The viewport with the table's top in view: what a reader sees of it.
      await page.locator(`table[data-index="${shot.index}"]`).evaluate((el) => el.scrollIntoView());
      await page.screenshot({ path: config.screenshot });
    }
  }
  await browser.close();
  return { pages, errors };
}

runDriver('docs_drive.js', 30000, main);
