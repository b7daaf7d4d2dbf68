'use strict';
// Room tokens: the unmodified npm client carries a signed token inside the
// socket_url it is given (`.../connect?token=...`; it appends `?cbor=true`).
// argv: BASE_URL WRITE_SOCKET_URL READ_SOCKET_URL. A read-only member gets an
// `error` for its push and still receives the writer's.
const { barrier, deferred, errorsOf, openConnection, run, waitUntil } = require('./common');

const KEY = 'tokened';

run(async () => {
  const [writeUrl, readUrl] = process.argv.slice(3);
  const writer = await openConnection(writeUrl, true); // CBOR: URL gets ?cbor=true appended
  const reader = await openConnection(readUrl, false);
  reader.allowErrors = true;

  const got = deferred();
  reader.subscribe(KEY, (value) => got.resolve(value));
  writer.subscribe(KEY, () => {});
  await Promise.all([barrier(writer), barrier(reader)]);

  reader.send({ type: 'push', key: KEY, value: 'from reader', action: { type: 'append' } });
  await waitUntil(() => errorsOf(reader).length > 0, 'the read-only push error');
  writer.send({ type: 'push', key: KEY, value: 'from writer', action: { type: 'append' } });
  const value = await got.promise;
  await barrier(writer);

  const result = {
    reader_errors: errorsOf(reader),
    writer_errors: errorsOf(writer),
    reader_got: value,
  };
  writer.disconnect();
  reader.disconnect();
  return result;
});
