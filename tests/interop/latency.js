'use strict';
// Scenario 7: testLatency() (ping without nonce -> pong), JSON and CBOR modes.
const { driftdb, errorsOf, openConnection, roomFromArgs, run } = require('./common');

run(async (baseUrl) => {
  const room = await roomFromArgs(new driftdb.Api(baseUrl));
  const notConnected = new driftdb.DbConnection().testLatency();
  const result = { not_connected: notConnected, json: [], cbor: [], pongs: {}, errors: [] };
  for (const [mode, cbor] of [['json', false], ['cbor', true]]) {
    const db = await openConnection(room.socket_url, cbor);
    for (let i = 0; i < 3; i++) result[mode].push(await db.testLatency());
    result.pongs[mode] = db.received.filter((m) => m.type === 'pong');
    result.errors.push(...errorsOf(db));
    db.disconnect();
  }
  return result;
});
