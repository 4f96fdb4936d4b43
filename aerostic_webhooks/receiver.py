"""``WebhookReceiver``: verify, parse, record and acknowledge; then hand events to handlers."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, Literal, NamedTuple, TypeVar

from .errors import (
    InvalidPayload,
    InvalidSignature,
    PayloadTooLarge,
    ProcessingFailed,
    StoreUnavailable,
    WebhookError,
    error_text,
    log_failure,
)
from .events import Event, parse_event
from .intake import INLINE_MAX_BYTES, Intake, handler_pool, off_loop
from .leases import LeaseKeeper
from .signature import SIGNATURE_HEADER, Secrets, signing_keys, verify_with_keys
from .stores.base import Record, Status, Store, utcnow
from .stores.sqlite import SQLiteStore
from .worker import (
    DEFAULT_RETRY_DELAYS,
    LoopThread,
    Worker,
    check_settings,
    new_owner_id,
)

__all__ = ["DEFAULT_MAX_BODY_BYTES", "Headers", "Receipt", "WebhookReceiver", "default_event_id"]

logger = logging.getLogger("aerostic_webhooks")

DEFAULT_MAX_BODY_BYTES = 1_048_576
SECRET_ENV = "AEROSTIC_WEBHOOK_SECRET"  # noqa: S105 (the variable's name, not a secret)
DB_ENV = "AEROSTIC_WEBHOOKS_DB"
DEFAULT_DB = "aerostic_webhooks.sqlite3"
_MAX_EVENT_ID = 512

Headers = Mapping[str, str] | Mapping[bytes, bytes] | Iterable[tuple[Any, Any]]
#: Header types with a ``getlist`` that keep the lines of a repeated header apart, as ASGI
#: servers hand them over; their lines are joined by commas, as a WSGI server joins them.
#: Adapters add their framework's (the Starlette adapter adds Starlette's ``Headers``).
SEPARATE_LINES: set[type] = set()
# What a handler or hook returns is ignored, but for an awaitable, which is awaited.
Handler = Callable[[Any], object]
ErrorHook = Callable[[Any, BaseException], object]
H = TypeVar("H", bound=Handler)
T = TypeVar("T")
E = TypeVar("E", bound=ErrorHook)


class Receipt(NamedTuple):
    """What ``receive`` did with a delivery: the event, its identity, and whether it was seen."""

    event: Event
    event_id: str
    duplicate: bool = False


_current_event_id: ContextVar[str] = ContextVar("aerostic_webhooks_event_id")


def secrets_from_env() -> list[str]:
    """``$AEROSTIC_WEBHOOK_SECRET``'s secrets: comma-separated while rotating, blanks dropped."""
    return [part.strip() for part in os.environ.get(SECRET_ENV, "").split(",") if part.strip()]


def current_event_id() -> str:
    """The id of the event whose handlers are running (``LookupError`` outside a handler)."""
    return _current_event_id.get()


def default_event_id(event: Event, body: bytes) -> str:
    """``"{event}:{data.id}"``, else ``"sha256:{digest of the body}"``: when the data has no
    id, an empty one, one not a string or an integer, or one no store can key by."""
    data = event.data
    data_id = data.get("id") if isinstance(data, dict) else getattr(data, "id", None)
    if isinstance(data_id, bool) or not isinstance(data_id, (str, int)):
        data_id = None
    if data_id is not None and data_id != "":
        event_id = f"{event.event}:{data_id}"
        if _usable_id(event_id):
            return event_id
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _usable_id(event_id: str) -> bool:
    """Every store can key a record by it: not too long (the Django model's column), no NUL
    (PostgreSQL refuses it), and UTF-8 text: a lone surrogate (text decoded with
    ``surrogateescape``, say) is refused by SQLite, Redis and PostgreSQL alike."""
    if not 0 < len(event_id) <= _MAX_EVENT_ID or "\x00" in event_id:
        return False
    if event_id.isascii():
        return True
    try:
        event_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _describe_id(event_id: object) -> str:
    """What was wrong with an unusable id, for the log (never the whole of it)."""
    if not isinstance(event_id, str):
        return f"but a {type(event_id).__name__}"
    if not event_id:
        return "but an empty one"
    if len(event_id) > _MAX_EVENT_ID:
        return f"but one of {len(event_id)} characters"
    if "\x00" in event_id:
        return "but one holding a NUL"
    return "but one that is not UTF-8 text (a lone surrogate)"


def _context_refusal(error: Exception, deliveries: int) -> StoreUnavailable:
    """The 503 of deliveries refused because ``worker_context`` raised, said once in the log."""
    logger.warning(
        "worker_context failed, %d delivery(ies) refused: %s", deliveries, type(error).__name__
    )
    return StoreUnavailable(f"worker_context raised {type(error).__name__}")


def _header(headers: Headers, name: str) -> str | bytes | None:
    """Find a header whatever the mapping: case-insensitive ones, plain dicts, lists of pairs."""
    if type(headers) in SEPARATE_LINES:
        values = headers.getlist(name)  # type: ignore[union-attr]
        return _single(values) if values else None
    getter = getattr(headers, "get", None)
    if getter is not None:
        for candidate in (name, name.lower()):
            value = getter(candidate)
            if value is not None:
                return _single(value)
    items: Iterable[tuple[Any, Any]] = headers.items() if isinstance(headers, Mapping) else headers
    lower = name.lower()
    for key, value in items:
        text = key.decode("latin-1") if isinstance(key, bytes) else key
        if isinstance(text, str) and text.lower() == lower:
            return _single(value)
    return None


def _single(value: Any) -> str | bytes | None:
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return None


def _pattern_matches(pattern: str, event_type: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


class WebhookReceiver:
    """Receives Aerostic webhooks: the pipeline every adapter calls, and the handler registry.

    ``receive`` checks size, then signature, then parses, records and acknowledges. Handlers
    run later on this process's worker (``process="background"``), inside ``receive``
    (``"inline"``, for serverless), or on a worker that another process runs with ``start()``
    (``"external"``: this one only records, for example a web process beside a worker
    command).
    """

    def __init__(
        self,
        secret: Secrets | None = None,
        *,
        store: Store | None = None,
        process: Literal["background", "inline", "external"] = "background",
        event_id: Callable[[Event], str] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        retry_delays: Iterable[float] = DEFAULT_RETRY_DELAYS,
        concurrency: int = 4,
        lease_seconds: float = 30.0,
        retention: timedelta = timedelta(days=7),
        worker_context: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        if secret is None:
            secret = secrets_from_env()
        self._keys = signing_keys(secret)
        if process not in ("background", "inline", "external"):
            raise ValueError(
                f"process must be 'background', 'inline' or 'external', not {process!r}"
            )
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        retry_delays = check_settings(  # before the default store makes its file
            concurrency=concurrency,
            lease_seconds=lease_seconds,
            retry_delays=retry_delays,
            retention=retention,
        )
        lease_seconds = float(lease_seconds)  # a plain float, as the worker's (see check_settings)
        self.max_body_bytes = max_body_bytes
        self.process = process
        self._event_id = event_id
        self.store: Store = store if store is not None else _default_store()
        self._handlers: list[tuple[str, Handler]] = []
        self._error_hooks: list[ErrorHook] = []
        self._matching: dict[str, tuple[Handler, ...]] = {}
        self._registry_lock = threading.Lock()
        self._loop = LoopThread()
        self._lease = lease_seconds
        self._inline_owner = new_owner_id() + ":inline"
        self._inline_leases = LeaseKeeper(
            self.store, self._inline_owner, lease_seconds, worker_context
        )
        self._parsed = _ParsedEvents()
        self._context = worker_context or nullcontext
        self._intake = Intake(self._record_batch)
        self._worker = Worker(
            self.store,
            self._process_record,
            concurrency=concurrency,
            lease_seconds=lease_seconds,
            retry_delays=retry_delays,
            retention=retention,
            context=worker_context,
        )

    # -- registration -------------------------------------------------------------------------

    def on(self, pattern: str) -> Callable[[H], H]:
        """Register a handler for an event type, a family (``"message.*"``) or all (``"*"``)."""
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("an event pattern is a non-empty string such as 'message.received'")
        if "*" in pattern.removesuffix(".*") and pattern != "*":
            raise ValueError(f"unsupported pattern {pattern!r}: use 'type', 'family.*' or '*'")

        def register(handler: H) -> H:
            if not callable(handler):
                raise TypeError(f"handler must be callable, not {type(handler).__name__}")
            with self._registry_lock:
                self._handlers.append((pattern, handler))
                self._matching = {}
            return handler

        return register

    def on_error(self, hook: E) -> E:
        """Register ``hook(event, error)``, called for every handler failure."""
        if not callable(hook):
            raise TypeError(f"error hook must be callable, not {type(hook).__name__}")
        with self._registry_lock:
            self._error_hooks.append(hook)
        return hook

    def registered(self) -> tuple[tuple[tuple[str, Handler], ...], tuple[ErrorHook, ...]]:
        """Everything registered, in order: the handlers with their patterns, and the error
        hooks; for registering them on another receiver (``on(pattern)(handler)``,
        ``on_error(hook)``), as the Django app does when its settings change."""
        with self._registry_lock:
            return tuple(self._handlers), tuple(self._error_hooks)

    def handlers_for(self, event_type: str) -> tuple[Handler, ...]:
        """The handlers ``event_type`` runs, in registration order."""
        found = self._matching.get(event_type)
        if found is None:
            with self._registry_lock:
                found = tuple(h for p, h in self._handlers if _pattern_matches(p, event_type))
                if len(self._matching) < 1024:
                    self._matching[event_type] = found
        return found

    # -- the request path ---------------------------------------------------------------------

    def receive(self, body: bytes | bytearray | memoryview, headers: Headers) -> Receipt:
        """Verify, parse and record one delivery; raise a ``WebhookError`` if it is refused.

        Returns once the delivery is recorded (or recognised as a duplicate); handlers have
        not run yet unless the receiver is inline.
        """
        event, event_id, raw = self._accept(body, headers)
        if self.process == "inline":
            return self._receive_inline(event, event_id, raw)
        return self._record(event, event_id, raw)

    async def receive_async(
        self, body: bytes | bytearray | memoryview, headers: Headers
    ) -> Receipt:
        """``receive`` for a coroutine on an asyncio loop, which it never blocks.

        A small delivery is verified, parsed and named on the loop (so an ``event_id=``
        callable must not do I/O); a store that does I/O records it on the receiver's intake
        thread, many deliveries per transaction. Large bodies go to a thread whole; so do
        inline receivers (whose handlers run here) and subclasses with a ``receive`` of their
        own, on a pool of ``HANDLER_THREADS`` threads (as many as Starlette gives sync endpoints).
        """
        if self.process == "inline" or type(self).receive is not WebhookReceiver.receive:
            # Handlers, or a subclass's own receive: the user's code, which may wait.
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(handler_pool(), self._receive_off_loop, body, headers)
        if len(body) > INLINE_MAX_BYTES:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(off_loop(), self._receive_off_loop, body, headers)
        event, event_id, raw = self._accept(body, headers)
        if not getattr(self.store, "blocking", True):
            return self._record(event, event_id, raw)
        return await self._intake.submit((event, event_id, raw))

    def _receive_off_loop(self, body: bytes | bytearray | memoryview, headers: Headers) -> Receipt:
        """``receive`` on a pool thread, inside ``worker_context`` as the intake's writes are:
        nothing else looks after that thread's connections (Django's, closed after use, and
        replaced when the server dropped them)."""
        if self._context is nullcontext:
            return self.receive(body, headers)
        with ExitStack() as stack:
            try:
                stack.enter_context(self._context())
            except Exception as error:
                raise _context_refusal(error, 1) from None
            return self.receive(body, headers)

    def _record_batch(
        self, batch: list[tuple[Event, str, bytes]]
    ) -> list[Receipt | StoreUnavailable]:
        """The intake's write: one ``add_many`` call where the store has it, else ``add`` each.

        It runs on the intake's thread, inside ``worker_context`` like a worker step (Django's
        connection upkeep, for the ORM store).
        """
        try:
            with self._context():
                return self._record_on_this_thread(batch)
        except Exception as error:
            refusal = _context_refusal(error, len(batch))
            return [StoreUnavailable(refusal.reason) for _ in batch]

    def _record_on_this_thread(
        self, batch: list[tuple[Event, str, bytes]]
    ) -> list[Receipt | StoreUnavailable]:
        records = [self._pending(*accepted) for accepted in batch]
        add_many = _batch_add(self.store)
        outcomes = (
            self._add_each(records) if add_many is None else self._add_many(add_many, records)
        )
        return [
            outcome if isinstance(outcome, StoreUnavailable) else self._recorded(e, i, outcome)
            for (e, i, _), outcome in zip(batch, outcomes, strict=True)
        ]

    def _add_many(
        self, add_many: Callable[[list[Record]], Sequence[bool]], records: list[Record]
    ) -> list[bool | StoreUnavailable]:
        """Record a batch with one ``add_many`` call: each record's outcome, or its error."""
        try:
            answer = add_many(records)
        except StoreUnavailable as error:  # the store is down: none of them can be recorded
            logger.warning("store unavailable, deliveries refused: %s", error.reason)
            return [StoreUnavailable(error.reason) for _ in records]
        except Exception as error:
            if len(records) == 1:
                logger.warning("store unavailable, delivery refused: %s", type(error).__name__)
                return [StoreUnavailable(f"store raised {type(error).__name__}")]
            # Not the store being down but something in what it was given (a value it cannot
            # write, a bug of its own): one delivery must not cost the others theirs, so each
            # is written alone, and only the bad one is refused.
            logger.warning(
                "could not record %d deliveries in one call (%s); recording each alone",
                len(records),
                type(error).__name__,
            )
            return self._add_each(records)
        try:
            outcomes: list[bool | StoreUnavailable] = [bool(added) for added in answer]
        except Exception as error:  # an answer that is not a sequence of flags
            reason = f"add_many answered with {type(error).__name__}"
        else:
            if len(outcomes) == len(records):
                return outcomes
            reason = f"add_many gave {len(outcomes)} answers for {len(records)}"
        logger.warning("store unavailable, deliveries refused: %s", reason)
        return [StoreUnavailable(reason) for _ in records]

    def _add_each(self, records: list[Record]) -> list[bool | StoreUnavailable]:
        """``add`` each record on its own: its outcome, or the error that refused it."""
        outcomes: list[bool | StoreUnavailable] = []
        for record in records:
            try:
                outcomes.append(self._store_call(self.store.add, record))
            except StoreUnavailable as error:
                outcomes.append(error)
        return outcomes

    def _accept(
        self, body: bytes | bytearray | memoryview, headers: Headers
    ) -> tuple[Event, str, bytes]:
        """The store-free part of ``receive``: verify, parse and name a delivery."""
        try:
            if len(body) > self.max_body_bytes:
                raise PayloadTooLarge(
                    f"body of {len(body)} bytes is over the limit of {self.max_body_bytes}"
                )
            try:
                verify_with_keys(body, _header(headers, SIGNATURE_HEADER), self._keys)
            except InvalidSignature:
                raise
            except Exception:  # a header mapping that does not behave like one
                raise InvalidSignature("signature header unreadable") from None
            raw = bytes(body)
            event = parse_event(raw)
        except WebhookError as error:
            logger.warning("rejected a delivery: %s", error.reason)
            raise
        event_id = (
            default_event_id(event, raw) if self._event_id is None else self._identify(event, raw)
        )
        return event, event_id, raw

    def _record(self, event: Event, event_id: str, raw: bytes) -> Receipt:
        """Store one accepted delivery with ``add`` and give its receipt."""
        added = self._store_call(self.store.add, self._pending(event, event_id, raw))
        return self._recorded(event, event_id, added)

    @staticmethod
    def _pending(event: Event, event_id: str, raw: bytes) -> Record:
        """The record of a new delivery, due now."""
        now = utcnow()
        return Record(event_id, event.event, raw, now, next_attempt_at=now)

    def _recorded(self, event: Event, event_id: str, added: bool) -> Receipt:
        """The receipt of a stored delivery; a new one is handed to this process's worker."""
        if not added:
            logger.debug("duplicate delivery of %s acknowledged", event_id)
            return Receipt(event, event_id, duplicate=True)
        logger.debug("recorded %s", event_id)
        if self.process == "background":
            self._parsed.put(event_id, event)
            if not self._worker.running:
                self._worker.start()
            self._worker.wake()
        return Receipt(event, event_id)

    def _identify(self, event: Event, body: bytes) -> str:
        """The user's ``event_id=`` rule, falling back to the default when it misbehaves."""
        assert self._event_id is not None
        try:
            event_id = self._event_id(event)
        except Exception:
            logger.exception("the event_id callable raised; using the default identity")
            return default_event_id(event, body)
        if not isinstance(event_id, str) or not _usable_id(event_id):
            logger.error(
                "the event_id callable returned no usable id (a str of 1 to %d characters, "
                "UTF-8 text with no NUL), %s; using the default identity",
                _MAX_EVENT_ID,
                _describe_id(event_id),
            )
            return default_event_id(event, body)
        return event_id

    def _receive_inline(self, event: Event, event_id: str, body: bytes) -> Receipt:
        now = utcnow()
        record = Record(
            event_id=event_id,
            event_type=event.event,
            body=body,
            received_at=now,
            status=Status.PROCESSING,
            attempts=1,
            lease_owner=self._inline_owner,
            lease_expires_at=now + timedelta(seconds=self._lease),
        )
        if not self._store_call(self.store.add, record):
            # A record whose lease ran out (its process died mid-handler) is ours to finish.
            taken = self._store_call(
                self.store.take, event_id, self._inline_owner, lease=self._lease
            )
            if taken is None:
                kept = self._store_call(self.store.get, event_id)
                if kept is not None and kept.status is Status.PROCESSING:
                    # Another request is running its handlers and may yet fail and release
                    # it: acknowledging this copy could lose the event. The sender retries.
                    raise StoreUnavailable(f"{event_id} is being processed by another request")
                logger.debug("duplicate delivery of %s acknowledged", event_id)
                return Receipt(event, event_id, duplicate=True)
        with self._inline_leases.holding(event_id):
            errors = self._run_handlers(event, event_id)
        if errors:
            self._store_call(self.store.release, event_id, self._inline_owner)
            raise ProcessingFailed(f"{len(errors)} handler(s) failed for {event_id}")
        self._store_call(self.store.complete, event_id, self._inline_owner)
        return Receipt(event, event_id)

    def _store_call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A store call on the request path: any failure is a 503, nothing acknowledged."""
        try:
            return method(*args, **kwargs)
        except StoreUnavailable as error:
            logger.warning("store unavailable, delivery refused: %s", error.reason)
            raise
        except Exception as error:
            logger.warning("store unavailable, delivery refused: %s", type(error).__name__)
            raise StoreUnavailable(f"store raised {type(error).__name__}") from error

    # -- processing ---------------------------------------------------------------------------

    def _process_record(self, record: Record) -> str | None:
        """Run the handlers of a stored record: ``None`` on success, else the first error."""
        event = self._parsed.take(record.event_id)
        if event is None:
            try:
                event = parse_event(record.body)
            except InvalidPayload as error:
                return error.reason
        errors = self._run_handlers(event, record.event_id)
        return error_text(errors[0]) if errors else None

    def _run_handlers(self, event: Event, event_id: str) -> list[BaseException]:
        """Run every matching handler in order; a failure does not stop the ones after it."""
        handlers = self.handlers_for(event.event)
        if not handlers:
            logger.debug("no handler for %s; marked done", event.event)
        errors: list[BaseException] = []
        token = _current_event_id.set(event_id)
        try:
            for handler in handlers:
                self._call_handler(handler, event, event_id, errors)
        finally:
            _current_event_id.reset(token)
        return errors

    def _call_handler(
        self, handler: Handler, event: Event, event_id: str, errors: list[BaseException]
    ) -> None:
        try:
            self._call(handler, event)
        except (Exception, SystemExit, asyncio.CancelledError) as error:
            # SystemExit or a cancellation from a handler is its failure, not ours: left to
            # propagate, it would end a worker thread and strand the record.
            errors.append(error)
            logger.error(
                "handler %s raised for %s",
                getattr(handler, "__qualname__", repr(handler)),
                event_id,
                exc_info=error,
            )
            self._report(event, error)

    def _call(self, function: Callable[..., Any], *args: Any) -> None:
        result = function(*args)
        if result is not None and inspect.isawaitable(result):
            self._loop.run(result)

    def _report(self, event: Event, error: BaseException) -> None:
        for hook in tuple(self._error_hooks):
            try:
                self._call(hook, event, error)
            except Exception:
                logger.exception("error hook %s raised", getattr(hook, "__qualname__", hook))

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker (a background receiver also starts it on ``receive`` and ``drain``)."""
        if self.process != "inline":
            self._worker.start()

    def start_serving(self) -> None:
        """What an adapter calls when its application starts: start a background worker.

        An ``"external"`` receiver leaves processing to its worker process, and an
        ``"inline"`` one has nothing to start.
        """
        if self.process == "background":
            self._worker.start()

    def stop_serving(self, timeout: float = 10.0) -> None:
        """What an adapter calls when its application stops: finish the work due now (a
        background receiver only), then stop the worker and close the store, all within
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        if self.process == "background":
            try:
                self._worker.drain(timeout)
            except Exception as error:  # the store is down: what is due stays recorded for later
                log_failure(
                    logger,
                    logging.WARNING,
                    "could not finish the due work at shutdown (%s)",
                    error=error,
                )
        self.close(max(deadline - time.monotonic(), 0.0))

    def retry(self, event_id: str) -> bool:
        """Queue a failed (or done, or scheduled) record again now; ``False`` if it cannot be."""
        requeued = self.store.requeue(event_id)
        if requeued:
            self.wake()
        return requeued

    def wake(self) -> None:
        """Tell this process's worker, if it is running, that records may be due now: after
        a change made in the store directly (the Django admin requeues in one UPDATE)."""
        if self._worker.running:
            self._worker.wake()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until the work due now is done; ``False`` if ``timeout`` seconds ran out first."""
        if self.process == "inline":
            return True
        return self._worker.drain(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker and the store, waiting at most ``timeout`` seconds in all for the
        deliveries being recorded and the handlers running."""
        deadline = time.monotonic() + timeout

        def remaining() -> float:
            return max(deadline - time.monotonic(), 0.0)

        self._intake.close(remaining())
        self._worker.close(remaining())
        self._inline_leases.close(remaining())
        self._loop.close(remaining())
        self.store.close()

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _ParsedEvents:
    """Events this process just recorded, so its worker need not parse their bodies again.

    Lock-free (single dict operations are atomic), so a delivery never waits for the worker.
    Entries the worker never takes (another process handled the record) are dropped all at
    once when the map is full; a record whose event is gone is simply parsed again.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._events: dict[str, Event] = {}

    def put(self, event_id: str, event: Event) -> None:
        if len(self._events) >= self._capacity:
            self._events.clear()
        self._events[event_id] = event

    def take(self, event_id: str) -> Event | None:
        return self._events.pop(event_id, None)


def _batch_add(store: Store) -> Callable[[list[Record]], Sequence[bool]] | None:
    """The store's ``add_many``, unless a subclass overrides ``add`` below it (then its
    ``add_many`` would not go through that ``add``)."""
    mro = type(store).__mro__
    owner_of_many = next((c for c in mro if "add_many" in vars(c)), None)
    owner_of_add = next((c for c in mro if "add" in vars(c)), None)
    if owner_of_many is None or (
        owner_of_add is not None and mro.index(owner_of_add) < mro.index(owner_of_many)
    ):
        return None
    add_many: Callable[[list[Record]], Sequence[bool]] = getattr(store, "add_many")  # noqa: B009
    return add_many


def _default_store() -> Store:
    return SQLiteStore(os.environ.get(DB_ENV) or DEFAULT_DB)
