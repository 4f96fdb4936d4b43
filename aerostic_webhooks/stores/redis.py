"""A store in Redis, for receivers on several hosts: dedup, queue, retries and dead letters.

Every change is one Lua script, so it is atomic whatever the number of receivers. Keys, under
``prefix``: ``r:<event_id>`` (a hash per record), ``due`` (a sorted set of claimable records
by due time: pending ones at their next attempt, processing ones at their lease end),
``s:<status>`` and ``all`` (sorted sets by received time, for listing and counting). Times are
the receivers' clocks in Unix seconds; hosts are expected to keep them in sync (NTP).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import redis

from ..errors import StoreUnavailable, error_summary
from .base import LEASE_LAPSED, Record, Status, due_times

__all__ = ["RedisStore"]

logger = logging.getLogger("aerostic_webhooks")

_FIELDS = (
    "event_type",
    "body",
    "received_at",
    "status",
    "attempts",
    "last_error",
    "next_attempt_at",
    "lease_owner",
    "lease_expires_at",
    "updated_at",
)

# Shared Lua helpers: move a record between status sets; claim one record for an owner.
_LIB = (
    """
local p = ARGV[1]
local LAPSED = [["""
    + LEASE_LAPSED
    + """]]
local FIELDS = {"""
    + ", ".join(f"'{field}'" for field in _FIELDS)
    + """}
-- A claimed record as a reply: its id and its fields, in _FIELDS's order.
local function fetched(id)
  return {id, redis.call('HMGET', p .. 'r:' .. id, unpack(FIELDS))}
end
local function move(id, from, to)
  if from ~= to then
    local received = redis.call('HGET', p .. 'r:' .. id, 'received_at')
    redis.call('ZREM', p .. 's:' .. from, id)
    redis.call('ZADD', p .. 's:' .. to, received, id)
  end
end
local function claim(id, now, owner, expires)
  local key = p .. 'r:' .. id
  local status = redis.call('HGET', key, 'status')
  if not status then
    redis.call('ZREM', p .. 'due', id)
    return false
  end
  redis.call('HINCRBY', key, 'attempts', 1)
  if status == 'processing' then redis.call('HSET', key, 'last_error', LAPSED) end
  redis.call('HSET', key, 'status', 'processing', 'next_attempt_at', '',
             'lease_owner', owner, 'lease_expires_at', expires, 'updated_at', now)
  redis.call('ZADD', p .. 'due', expires, id)
  move(id, status, 'processing')
  return true
end
local function held(id, owner)
  local key = p .. 'r:' .. id
  local values = redis.call('HMGET', key, 'status', 'lease_owner')
  return values[1] == 'processing' and values[2] == owner
end
"""
)

_ADD = (
    _LIB
    + """
local id = ARGV[2]
local key = p .. 'r:' .. id
if redis.call('EXISTS', key) == 1 then return 0 end
redis.call('HSET', key, 'event_type', ARGV[3], 'body', ARGV[4], 'received_at', ARGV[5],
           'status', ARGV[6], 'attempts', ARGV[7], 'next_attempt_at', ARGV[8],
           'lease_owner', ARGV[9], 'lease_expires_at', ARGV[10], 'updated_at', ARGV[5],
           'last_error', ARGV[12])
if ARGV[11] ~= '' then redis.call('ZADD', p .. 'due', ARGV[11], id) end
redis.call('ZADD', p .. 's:' .. ARGV[6], ARGV[5], id)
redis.call('ZADD', p .. 'all', ARGV[5], id)
return 1
"""
)

_CLAIM = (
    _LIB
    + """
local ids = redis.call('ZRANGEBYSCORE', p .. 'due', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local claimed = {}
for _, id in ipairs(ids) do
  if claim(id, ARGV[2], ARGV[4], ARGV[5]) then table.insert(claimed, fetched(id)) end
end
return claimed
"""
)

_TAKE = (
    _LIB
    + """
local due = redis.call('ZSCORE', p .. 'due', ARGV[2])
if not due or tonumber(due) > tonumber(ARGV[3]) then return {} end
if claim(ARGV[2], ARGV[3], ARGV[4], ARGV[5]) then return {fetched(ARGV[2])} end
return {}
"""
)

_RENEW = (
    _LIB
    + """
for i = 4, #ARGV do
  local id = ARGV[i]
  if held(id, ARGV[2]) then
    redis.call('HSET', p .. 'r:' .. id, 'lease_expires_at', ARGV[3])
    redis.call('ZADD', p .. 'due', ARGV[3], id)
  end
end
return 0
"""
)

# ARGV: prefix, id, owner, new status, next attempt ('' for none), set error ('1'/'0'), error, now
_FINISH = (
    _LIB
    + """
local id = ARGV[2]
if not held(id, ARGV[3]) then return 0 end
local key = p .. 'r:' .. id
redis.call('HSET', key, 'status', ARGV[4], 'lease_owner', '', 'lease_expires_at', '',
           'next_attempt_at', ARGV[5], 'updated_at', ARGV[8])
if ARGV[5] ~= '' then
  redis.call('ZADD', p .. 'due', ARGV[5], id)
else
  redis.call('ZREM', p .. 'due', id)
end
if ARGV[6] == '1' then redis.call('HSET', key, 'last_error', ARGV[7]) end
move(id, 'processing', ARGV[4])
return 1
"""
)

_RELEASE = (
    _LIB
    + """
local id = ARGV[2]
if not held(id, ARGV[3]) then return 0 end
redis.call('DEL', p .. 'r:' .. id)
redis.call('ZREM', p .. 'due', id)
redis.call('ZREM', p .. 's:processing', id)
redis.call('ZREM', p .. 'all', id)
return 1
"""
)

# ARGV: prefix, owner, now, ids...
_UNCLAIM = (
    _LIB
    + """
local count = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  if held(id, ARGV[2]) then
    local key = p .. 'r:' .. id
    if tonumber(redis.call('HGET', key, 'attempts')) > 0 then
      redis.call('HINCRBY', key, 'attempts', -1)
    end
    redis.call('HSET', key, 'status', 'pending', 'next_attempt_at', ARGV[3],
               'lease_owner', '', 'lease_expires_at', '', 'updated_at', ARGV[3])
    redis.call('ZADD', p .. 'due', ARGV[3], id)
    move(id, 'processing', 'pending')
    count = count + 1
  end
end
return count
"""
)

_REQUEUE_LIB = (
    _LIB
    + """
local function requeue(id, now)
  local key = p .. 'r:' .. id
  local status = redis.call('HGET', key, 'status')
  if not status or status == 'processing' then return 0 end
  redis.call('HSET', key, 'status', 'pending', 'attempts', 0, 'next_attempt_at', now,
             'updated_at', now)
  redis.call('ZADD', p .. 'due', now, id)
  move(id, status, 'pending')
  return 1
end
"""
)

# ARGV: prefix, now, id
_REQUEUE = _REQUEUE_LIB + "return requeue(ARGV[3], ARGV[2])\n"

# ARGV: prefix, now, batch size: the first failed records, a batch a call (see requeue_failed)
_REQUEUE_FAILED = (
    _REQUEUE_LIB
    + """
local count = 0
for _, id in ipairs(redis.call('ZRANGE', p .. 's:failed', 0, tonumber(ARGV[3]) - 1)) do
  if redis.call('EXISTS', p .. 'r:' .. id) == 0 then
    redis.call('ZREM', p .. 's:failed', id)  -- its record is gone (evicted): nothing to do
  else
    count = count + requeue(id, ARGV[2])
  end
end
return count
"""
)

# ARGV: prefix, cutoff, batch size
_PURGE = (
    _LIB
    + """
local count = 0
for _, status in ipairs({'done', 'failed'}) do
  local set = p .. 's:' .. status
  local ids = redis.call('ZRANGEBYSCORE', set, '-inf', '(' .. ARGV[2], 'LIMIT', 0,
                         tonumber(ARGV[3]))
  for _, id in ipairs(ids) do
    redis.call('DEL', p .. 'r:' .. id)
    redis.call('ZREM', set, id)
    redis.call('ZREM', p .. 'all', id)
    count = count + 1
  end
end
return count
"""
)


# How many records one purge or requeue_failed script changes: a few milliseconds of Redis.
_BATCH = 500


def _opt(value: datetime | None) -> str:
    return "" if value is None else repr(value.timestamp())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _time(value: Any) -> datetime | None:
    text = "" if value is None else _text(value)
    return datetime.fromtimestamp(float(text), timezone.utc) if text else None


class RedisStore:
    """A ``Store`` in Redis, shared by every receiver that uses the same server and prefix.

    Pass a URL or an existing ``redis.Redis`` client. A client made from a URL has socket
    timeouts of ``timeout`` seconds, so a hung Redis makes ``receive()`` answer 503 well
    inside the sender's 5 second limit instead of hanging.
    """

    def __init__(
        self,
        url: str | None = "redis://127.0.0.1:6379/0",
        *,
        client: redis.Redis | None = None,
        prefix: str = "aerostic_webhooks:",
        timeout: float = 2.0,
    ) -> None:
        if client is None:
            if not url:
                raise ValueError("RedisStore needs a url or a client")
            client = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        self.client = client
        self.prefix = prefix
        self._eviction_checked = False
        self._closes = 0  # a batched purge that sees it change stops: close() came meanwhile
        self._scripts = {
            name: client.register_script(source)
            for name, source in (
                ("add", _ADD),
                ("claim", _CLAIM),
                ("take", _TAKE),
                ("renew", _RENEW),
                ("finish", _FINISH),
                ("release", _RELEASE),
                ("unclaim", _UNCLAIM),
                ("requeue", _REQUEUE),
                ("requeue_failed", _REQUEUE_FAILED),
                ("purge", _PURGE),
            )
        }

    def _run(self, name: str, *args: str | bytes | int | float) -> Any:
        return self._scripts[name](keys=[], args=[self.prefix, *args])

    def _key(self, event_id: str) -> str:
        return f"{self.prefix}r:{event_id}"

    def _add_args(self, record: Record) -> list[str | bytes | int | float]:
        next_attempt, due = due_times(record)
        return [
            self.prefix,
            record.event_id,
            record.event_type,
            record.body,
            repr(record.received_at.timestamp()),
            record.status.value,
            record.attempts,
            _opt(next_attempt),
            record.lease_owner or "",
            _opt(record.lease_expires_at),
            _opt(due),
            record.last_error or "",
        ]

    def _check_eviction(self) -> None:
        """Say once, loudly, if this Redis may evict keys: acknowledged deliveries would go."""
        try:
            policy = _text(self.client.config_get("maxmemory-policy").get("maxmemory-policy", ""))
        except redis.ResponseError:  # CONFIG renamed or denied (managed services): cannot tell
            logger.debug("could not read Redis's maxmemory-policy", exc_info=True)
            self._eviction_checked = True
            return
        except redis.RedisError:  # gone since the write: the next delivery asks again
            return
        self._eviction_checked = True
        if policy.startswith("allkeys-"):
            logger.error(
                "Redis's maxmemory-policy is %s: under memory pressure it evicts webhook "
                "records, and acknowledged deliveries are lost. Use noeviction (or a "
                "volatile-* policy: these keys never expire) for the RedisStore's server.",
                policy,
            )

    def add(self, record: Record) -> bool:
        try:
            added = self._scripts["add"](keys=[], args=self._add_args(record))
        except redis.RedisError as error:
            raise StoreUnavailable(
                f"Redis could not record the delivery: {error_summary(error)}"
            ) from error
        if not self._eviction_checked:  # after a write: a Redis that is down costs no more
            self._check_eviction()
        return bool(added)

    def add_many(self, records: Sequence[Record]) -> list[bool]:
        """``add`` for several deliveries in one round trip. Not atomic: on an error some may
        be kept, and the sender's retry of those is then acknowledged as a duplicate."""
        add = self._scripts["add"]
        pipe = self.client.pipeline(transaction=False)
        for record in records:
            add(keys=[], args=self._add_args(record), client=pipe)
        try:
            added = [bool(added) for added in pipe.execute()]
        except redis.RedisError as error:
            raise StoreUnavailable(
                f"Redis could not record the deliveries: {error_summary(error)}"
            ) from error
        if not self._eviction_checked:
            self._check_eviction()
        return added

    def _fetch(self, event_ids: Sequence[Any]) -> list[Record]:
        if not event_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.hmget(self._key(_text(event_id)), _FIELDS)
        records = []
        for event_id, values in zip(event_ids, pipe.execute(), strict=True):
            if values[0] is None:
                continue  # purged between the two round trips
            records.append(self._record(_text(event_id), values))
        return records

    @staticmethod
    def _record(event_id: str, values: list[Any]) -> Record:
        fields = dict(zip(_FIELDS, values, strict=True))
        body = fields["body"]
        return Record(
            event_id=event_id,
            event_type=_text(fields["event_type"]),
            body=body.encode() if isinstance(body, str) else bytes(body),
            received_at=datetime.fromtimestamp(float(_text(fields["received_at"])), timezone.utc),
            status=Status(_text(fields["status"])),
            attempts=int(_text(fields["attempts"])),
            last_error=_text(fields["last_error"]) or None,
            next_attempt_at=_time(fields["next_attempt_at"]),
            lease_owner=_text(fields["lease_owner"] or "") or None,
            lease_expires_at=_time(fields["lease_expires_at"]),
            updated_at=_time(fields["updated_at"]),
        )

    def _claimed(self, reply: Sequence[Any]) -> list[Record]:
        """The records a claim script returns: its reply holds their fields, so that a
        connection lost after the claim cannot leave them leased but never seen (they would
        come back after the lease with an attempt charged, "lease expired")."""
        return [self._record(_text(event_id), values) for event_id, values in reply]

    def claim(self, owner: str, *, limit: int, lease: float) -> list[Record]:
        now = time.time()
        return self._claimed(self._run("claim", repr(now), limit, owner, repr(now + lease)))

    def take(self, event_id: str, owner: str, *, lease: float) -> Record | None:
        now = time.time()
        taken = self._claimed(self._run("take", event_id, repr(now), owner, repr(now + lease)))
        return taken[0] if taken else None

    def renew(self, owner: str, event_ids: Sequence[str], *, lease: float) -> None:
        if event_ids:
            self._run("renew", owner, repr(time.time() + lease), *event_ids)

    @staticmethod
    def _finish_args(
        event_id: str, owner: str, status: Status, at: datetime | None, error: str | None
    ) -> list[str]:
        """The "finish" script's arguments after the prefix."""
        flag = "0" if error is None else "1"
        return [event_id, owner, status.value, _opt(at), flag, error or "", repr(time.time())]

    def _finish(
        self, event_id: str, owner: str, status: Status, at: datetime | None, error: str | None
    ) -> bool:
        return bool(self._run("finish", *self._finish_args(event_id, owner, status, at, error)))

    def complete(self, event_id: str, owner: str) -> bool:
        return self._finish(event_id, owner, Status.DONE, None, None)

    def complete_many(self, owner: str, event_ids: Sequence[str]) -> int:
        finish = self._scripts["finish"]
        pipe = self.client.pipeline(transaction=False)  # one round trip for all of them
        for event_id in event_ids:
            args = self._finish_args(event_id, owner, Status.DONE, None, None)
            finish(keys=[], args=[self.prefix, *args], client=pipe)
        return sum(1 for finished in pipe.execute() if finished)

    def reschedule(self, event_id: str, owner: str, *, at: datetime, error: str) -> bool:
        return self._finish(event_id, owner, Status.PENDING, at, error)

    def fail(self, event_id: str, owner: str, *, error: str) -> bool:
        return self._finish(event_id, owner, Status.FAILED, None, error)

    def release(self, event_id: str, owner: str) -> bool:
        return bool(self._run("release", event_id, owner))

    def unclaim(self, owner: str, event_ids: Sequence[str]) -> int:
        if not event_ids:
            return 0
        return int(self._run("unclaim", owner, repr(time.time()), *event_ids))

    def requeue(self, event_id: str) -> bool:
        return bool(self._run("requeue", repr(time.time()), event_id))

    def requeue_failed(self) -> int:
        """In batches of ``_BATCH``, one script each, as ``purge``: one script for a large
        backlog of dead letters blocked Redis past its clients' timeouts. Records that fail
        again while it runs are left failed (it takes as many as were failed at the start)."""
        left = int(self.client.zcard(f"{self.prefix}s:failed"))
        total = 0
        while left > 0:
            batch = min(left, _BATCH)
            total += int(self._run("requeue_failed", repr(time.time()), batch))
            left -= batch
        return total

    def get(self, event_id: str) -> Record | None:
        found = self._fetch([event_id])
        return found[0] if found else None

    def list(
        self,
        *,
        status: Status | None = None,
        event_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Record]:
        if limit <= 0:
            return []
        index = f"{self.prefix}s:{Status(status).value}" if status else f"{self.prefix}all"
        if event_type is None:
            return self._fetch(self.client.zrevrange(index, offset, offset + limit - 1))
        matching: list[Record] = []
        skipped, start, page = 0, 0, max(limit, 100)
        while len(matching) < limit:
            ids = self.client.zrevrange(index, start, start + page - 1)
            if not ids:
                break
            start += page
            for record in self._fetch(ids):
                if record.event_type != event_type:
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                matching.append(record)
                if len(matching) == limit:
                    break
        return matching

    def counts(self) -> dict[Status, int]:
        pipe = self.client.pipeline(transaction=False)
        for status in Status:
            pipe.zcard(f"{self.prefix}s:{status.value}")
        return {status: int(n) for status, n in zip(Status, pipe.execute(), strict=True)}

    def next_due(self) -> datetime | None:
        first = self.client.zrange(f"{self.prefix}due", 0, 0, withscores=True)
        return datetime.fromtimestamp(float(first[0][1]), timezone.utc) if first else None

    def purge(self, *, older_than: datetime) -> int:
        """In batches of ``_BATCH``, one script each; stopped between two by ``close()``,
        after which another would open a connection that nothing closes."""
        closes = self._closes
        total = 0
        while True:
            purged = int(self._run("purge", repr(older_than.timestamp()), _BATCH))
            total += purged
            if purged == 0 or self._closes != closes:
                return total

    def maintain(self) -> None:
        """Nothing to keep up: Redis does its own."""

    def close(self) -> None:
        self._closes += 1
        self.client.close()

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r})"
