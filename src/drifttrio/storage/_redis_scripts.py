"""The Lua scripts that make Redis the ordering point of shared rooms.

Every key of a room ``R`` carries the hash tag ``{R}``, so a Redis Cluster keeps a
room on one shard and each script runs atomically on it:

* ``P:{R}`` - hash: ``seq`` (high-water seq), ``ev`` (events published so far),
  ``bytes`` (retained bytes: the sum of the entries' charges and of the streams'
  charges, added when each stream was created), ``created``, ``last`` (unix time of
  last activity);
* ``P:{R}:keys`` - hash: stream key -> its compaction mark;
* ``P:{R}:s:KEY`` - list: the stream's entries, each ``"SEQ:CHARGE|" + CBOR(value)``,
  where CHARGE is what the value counts for against ``max_room_bytes`` (its cost in a
  node's memory, computed by the node that pushed it: ``value_size``). Entries stored
  before charges were, ``"SEQ|" + CBOR``, count the size of their CBOR;
* ``P:{R}:log`` - Redis stream: the last events, id ``EV-0``, for gap repair;
* ``P:{R}:ev`` - the pub/sub channel every event batch is published on;
* ``P:{R}:journal`` - Redis stream: the room's committed pushes not yet delivered to
  ``on_committed`` (only while a node journals), id ``0-N`` (N counts up per room),
  fields ``s`` (seq), ``a`` (action), ``k`` (key), ``v`` (CBOR value). Not deleted
  with the room; it expires a day after it was last emptied.

And beside the rooms (one key each, on whichever shard; no script touches both a
room and these):

* ``P:journal:rooms`` - sorted set: the rooms whose journal may hold entries, scored
  with the Redis time they were last marked (before each journaled push);
* ``P:journal:lease`` - string: which node delivers the journal (expires unless
  renewed).

An event record is ``"EV|SEQ|ACTION|KEYLEN|BLOBLEN|" + key + CBOR(value)``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "COMMIT",
    "CREATE",
    "DELETE",
    "IMPORT",
    "JOURNAL_LEASE",
    "JOURNAL_MARK",
    "JOURNAL_TRIM",
    "JOURNAL_UNMARK",
    "LOAD",
    "PUSH",
    "TOUCH",
]

# Shared Lua helpers: the seq and charge of an entry, and the retained bytes of a list.
_HELPERS: Final = r"""
local function entry_seq(el)
  local p = string.find(el, '|', 1, true)
  local head = string.sub(el, 1, p - 1)
  local c = string.find(head, ':', 1, true)
  if c then return tonumber(string.sub(head, 1, c - 1)), tonumber(string.sub(head, c + 1)) end
  return tonumber(head), #el - p  -- stored before charges were: its CBOR size
end
local function list_bytes(skey, upto)
  -- bytes (and count) of the leading entries with seq <= upto (all if upto is nil)
  local total, count = 0, 0
  for _, el in ipairs(redis.call('LRANGE', skey, 0, -1)) do
    local s, size = entry_seq(el)
    if upto ~= nil and s > upto then break end
    total = total + size
    count = count + 1
  end
  return total, count
end
local function fmt(n) return string.format('%d', n) end
"""

#: KEYS: meta, keys, log, journal, stream lists...; ARGV: now, log_max, publish
#: command, channel, max_keys, max_values, max_bytes, floor_ev, n, journal ('1' to
#: journal the retained pushes, '0' not to), then 8 per push:
#: action, index of its stream list in KEYS, key, CBOR value, compact seq, charge of
#: the entry, charge of the stream if the push creates it (``value_size``, ``key_size``),
#: and the seq the key's last retained entry must have (0: none), or ``''`` for none:
#: a conditional push whose key has another is refused before any other rule.
#: Returns false if the room does not exist, ``{'behind', ev}`` if Redis holds fewer
#: events than this node has seen (it lost data), else one result per push:
#: ``{'ok', seq, stream_size, ev}``, ``{'noop'}`` or ``{'err', reason, numbers...}``,
#: where reason is the value of a :class:`~drifttrio.core.refusals.PushRefusal` and the
#: numbers are those its text takes (the node renders the text). These rules are
#: :class:`~drifttrio.core.RoomState`'s, in Lua: keep them in step (a differential
#: test, ``tests/test_push_rules_differential.py``, compares the two).
PUSH: Final = (
    _HELPERS
    + r"""
local meta, keysh, log = KEYS[1], KEYS[2], KEYS[3]
local seq = redis.call('HGET', meta, 'seq')
if not seq then return false end
seq = tonumber(seq)
local ev = tonumber(redis.call('HGET', meta, 'ev') or '0')
if ev < tonumber(ARGV[8]) then return {'behind', ev} end
local bytes = tonumber(redis.call('HGET', meta, 'bytes') or '0')
local now, log_max, pub, chan = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local max_keys, max_values, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local n = tonumber(ARGV[9])
local journal, journaling, journaled = KEYS[4], ARGV[10] == '1', false
local results, records = {}, {}

local function new_key_refused(name)
  if max_keys > 0 and redis.call('HEXISTS', keysh, name) == 0
      and redis.call('HLEN', keysh) >= max_keys then
    return {'err', 'keys', max_keys}
  end
  return nil
end
local function bytes_refused(after)
  if max_bytes > 0 and after > max_bytes then
    return {'err', 'bytes', max_bytes}
  end
  return nil
end
local function conflict(skey, expect)
  -- a conditional push: refused unless the key's last retained seq is the expected one
  if expect == '' then return nil end
  local last = redis.call('LINDEX', skey, -1)
  last = last and entry_seq(last) or 0
  if last ~= tonumber(expect) then return {'err', 'conflict', last, expect} end
  return nil
end

for i = 0, n - 1 do
  local b = 11 + i * 8
  local action, skey, name, blob = ARGV[b], KEYS[tonumber(ARGV[b + 1])], ARGV[b + 2], ARGV[b + 3]
  local charge, stream_charge = tonumber(ARGV[b + 5]), 0
  local function charge_stream()  -- a push creating its stream pays for the stream too
    if redis.call('HEXISTS', keysh, name) == 0 then stream_charge = tonumber(ARGV[b + 6]) end
  end
  local result, at = conflict(skey, ARGV[b + 7]), nil
  if result then
    -- refused: nothing else is decided for it
  elseif action == 'relay' then
    seq = seq + 1
    at = seq
    result = {'ok', seq, redis.call('LLEN', skey)}
  elseif action == 'replace' or action == 'append' then
    local refused = new_key_refused(name)
    local len = redis.call('LLEN', skey)
    if not refused and action == 'append' and max_values > 0 and len >= max_values then
      refused = {'err', 'values', max_values}
    end
    local removed = 0
    charge_stream()
    if not refused and action == 'replace' then removed = list_bytes(skey) end
    if not refused then refused = bytes_refused(bytes - removed + charge + stream_charge) end
    if refused then
      result = refused
    else
      seq = seq + 1
      at = seq
      if action == 'replace' then redis.call('DEL', skey) end
      len = redis.call('RPUSH', skey, fmt(seq) .. ':' .. fmt(charge) .. '|' .. blob)
      redis.call('HSETNX', keysh, name, '0')
      bytes = bytes - removed + charge + stream_charge
      result = {'ok', seq, len}
    end
  else -- compact
    local cseq = tonumber(ARGV[b + 4])
    local mark = tonumber(redis.call('HGET', keysh, name) or '0')
    if cseq < 1 then
      result = {'err', 'compact_low', cseq}
    elseif cseq > seq then
      result = {'err', 'compact_high', cseq, seq}
    elseif redis.call('HEXISTS', keysh, name) == 1 and cseq <= mark then
      result = {'noop'}
    else
      local refused = new_key_refused(name)
      local removed, count = list_bytes(skey, cseq)
      charge_stream()
      if not refused then refused = bytes_refused(bytes - removed + charge + stream_charge) end
      if refused then
        result = refused
      else
        if count > 0 then redis.call('LTRIM', skey, count, -1) end
        local len = redis.call('LPUSH', skey, fmt(cseq) .. ':' .. fmt(charge) .. '|' .. blob)
        redis.call('HSET', keysh, name, fmt(cseq))
        bytes = bytes - removed + charge + stream_charge
        at = cseq
        result = {'ok', cseq, len}
      end
    end
  end
  if at ~= nil then
    ev = ev + 1
    result[4] = ev
    local record = string.format('%d|%d|%s|%d|%d|', ev, at, action, #name, #blob) .. name .. blob
    redis.call('XADD', log, 'MAXLEN', '~', log_max, fmt(ev) .. '-0', 'p', record)
    records[#records + 1] = record
    if journaling and action ~= 'relay' then
      redis.call('XADD', journal, '0-*', 's', fmt(at), 'a', action, 'k', name, 'v', blob)
      journaled = true
    end
  end
  results[#results + 1] = result
end
redis.call('HSET', meta, 'seq', fmt(seq), 'ev', fmt(ev), 'bytes', fmt(bytes), 'last', now)
if journaled then redis.call('PERSIST', journal) end
if #records > 0 then redis.call(pub, chan, table.concat(records)) end
return results
"""
)

#: KEYS: meta, keys; ARGV: the key prefix of stream lists. Returns false if the room
#: does not exist, else ``{seq, ev, {key, mark, {entries...}}...}``.
LOAD: Final = r"""
local meta, keysh = KEYS[1], KEYS[2]
local seq = redis.call('HGET', meta, 'seq')
if not seq then return false end
local out = {seq, redis.call('HGET', meta, 'ev') or '0'}
local fields = redis.call('HGETALL', keysh)
for i = 1, #fields, 2 do
  out[#out + 1] = {fields[i], fields[i + 1], redis.call('LRANGE', ARGV[1] .. fields[i], 0, -1)}
end
return out
"""

#: KEYS: meta; ARGV: now. Creates the room if it does not exist; returns 1 if it did.
CREATE: Final = r"""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'seq', '0', 'ev', '0', 'bytes', '0', 'created', ARGV[1],
  'last', ARGV[1])
return 1
"""

#: KEYS: meta, keys, log; ARGV: stream list prefix, and optionally a cutoff: then the
#: room is only deleted if its last activity is older than the cutoff. Returns 1 if
#: deleted.
DELETE: Final = r"""
local meta, keysh, log = KEYS[1], KEYS[2], KEYS[3]
if ARGV[2] then
  local last = redis.call('HGET', meta, 'last')
  if not last or tonumber(last) >= tonumber(ARGV[2]) then return 0 end
end
for _, name in ipairs(redis.call('HKEYS', keysh)) do redis.call('DEL', ARGV[1] .. name) end
return redis.call('DEL', meta, keysh, log) > 0 and 1 or 0
"""

#: KEYS: meta; ARGV: now. Marks activity (if the room exists).
TOUCH: Final = r"""
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'last', ARGV[1]) end
return 1
"""

#: KEYS: meta, keys, journal; ARGV: now, seq, stream list prefix, journal ('1' or
#: '0'), then 3 per change: kind, key, entry (``"SEQ:CHARGE|" + CBOR``). Applies
#: changes without publishing (the plain :class:`Storage` interface). Returns false if
#: the room does not exist.
COMMIT: Final = (
    _HELPERS
    + r"""
local meta, keysh, journal = KEYS[1], KEYS[2], KEYS[3]
local seq = redis.call('HGET', meta, 'seq')
if not seq then return false end
local journaling = ARGV[4] == '1' and #ARGV > 4
local bytes = tonumber(redis.call('HGET', meta, 'bytes') or '0')
for i = 5, #ARGV, 3 do
  local kind, name, entry = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local skey = ARGV[3] .. name
  local at, size = entry_seq(entry)
  if journaling then
    local blob = string.sub(entry, string.find(entry, '|', 1, true) + 1)
    redis.call('XADD', journal, '0-*', 's', fmt(at), 'a', kind, 'k', name, 'v', blob)
  end
  redis.call('HSETNX', keysh, name, '0')
  if kind == 'replace' then
    bytes = bytes - list_bytes(skey)
    redis.call('DEL', skey)
    redis.call('RPUSH', skey, entry)
  elseif kind == 'append' then
    redis.call('RPUSH', skey, entry)
  else
    local removed, count = list_bytes(skey, at)
    bytes = bytes - removed
    if count > 0 then redis.call('LTRIM', skey, count, -1) end
    redis.call('LPUSH', skey, entry)
    local mark = tonumber(redis.call('HGET', keysh, name))
    if at > mark then redis.call('HSET', keysh, name, fmt(at)) end
  end
  bytes = bytes + size
end
if tonumber(ARGV[2]) > tonumber(seq) then seq = ARGV[2] end
redis.call('HSET', meta, 'seq', seq, 'bytes', fmt(bytes), 'last', ARGV[1])
if journaling then redis.call('PERSIST', journal) end
return 1
"""
)

#: KEYS: meta, keys, log; ARGV: now, seq, stream list prefix, then 3 per stream:
#: key, compaction mark, entries joined by nothing but counted: count, then entries.
#: Replaces the room (creating it) with the given snapshot; the event count is kept.
#: Returns 1 if the room was created.
IMPORT: Final = (
    _HELPERS
    + r"""
local meta, keysh, log = KEYS[1], KEYS[2], KEYS[3]
local existed = redis.call('EXISTS', meta)
local ev = redis.call('HGET', meta, 'ev') or '0'
local created = redis.call('HGET', meta, 'created') or ARGV[1]
for _, name in ipairs(redis.call('HKEYS', keysh)) do redis.call('DEL', ARGV[3] .. name) end
redis.call('DEL', meta, keysh)
local bytes, i = 0, 4
while i <= #ARGV do
  local name, mark, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  redis.call('HSET', keysh, name, mark)
  for j = 1, count do
    local entry = ARGV[i + 2 + j]
    local _, size = entry_seq(entry)
    bytes = bytes + size
    redis.call('RPUSH', ARGV[3] .. name, entry)
  end
  i = i + 3 + count
end
redis.call('HSET', meta, 'seq', ARGV[2], 'ev', ev, 'bytes', fmt(bytes), 'created', created,
  'last', ARGV[1])
return 1 - existed
"""
)

# -- the committed-push journal's index and lease (one key each: any shard) ----------

#: KEYS: the journal index; ARGV: room id. Marks the room as having journal entries
#: (run before each journaled push, so a push is never journaled unmarked), scored
#: with this Redis's time.
JOURNAL_MARK: Final = r"""
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) + tonumber(t[2]) / 1000000, ARGV[1])
return 1
"""

#: KEYS: the journal index; ARGV: room id, grace seconds. Unmarks the room (its
#: journal was found empty) unless it was marked within the grace period: a push
#: marked since may not have run its script yet. Returns 1 if unmarked.
JOURNAL_UNMARK: Final = r"""
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
local t = redis.call('TIME')
if tonumber(score) > tonumber(t[1]) + tonumber(t[2]) / 1000000 - tonumber(ARGV[2]) then
  return 0
end
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

#: KEYS: the lease; ARGV: this node's token, milliseconds. Takes the lease if free,
#: renews it if this node holds it. Returns 1 if this node holds it now.
JOURNAL_LEASE: Final = r"""
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

#: KEYS: a room's journal; ARGV: the first id to keep (``0-N``), milliseconds an
#: emptied journal is kept. Trims the delivered entries; an empty journal expires
#: (pushes remove the expiry), so deleted rooms leave nothing behind for long.
JOURNAL_TRIM: Final = r"""
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
if redis.call('XLEN', KEYS[1]) == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""
