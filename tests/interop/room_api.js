'use strict';
// Scenario 1: the Room API (Api.newRoom / Api.getRoom) and the URLs it returns.
const { driftdb, barrier, deferred, errorsOf, openConnection, run } = require('./common');

run(async (baseUrl) => {
  const api = new driftdb.Api(baseUrl); // no trailing slash: the client adds one
  const created = await api.newRoom();
  const second = await api.newRoom();
  const fetched = await api.getRoom(created.room);

  // The client does not check the status: getRoom of an unknown id resolves
  // to whatever JSON the server answered with.
  const unknown = await api.getRoom('no-such-room-' + Date.now());
  const unknownRaw = await fetch(`${baseUrl}/room/no-such-room`);

  // The returned URLs work: a socket on socket_url receives a push sent to
  // http_url, and a get on the socket returns it.
  const db = await openConnection(fetched.socket_url);
  const got = deferred();
  db.subscribe('hello', (sv) => got.resolve(sv));
  await barrier(db);
  const http = new driftdb.HttpConnection(fetched.http_url);
  const httpReply = await http.send({
    type: 'push',
    key: 'hello',
    value: { from: 'http' },
    action: { type: 'append' },
  });
  const delivered = await got.promise;
  db.disconnect();

  return {
    created,
    second_room: second.room,
    fetched,
    unknown,
    unknown_status: unknownRaw.status,
    http_reply: httpReply,
    delivered,
    errors: errorsOf(db),
  };
});
