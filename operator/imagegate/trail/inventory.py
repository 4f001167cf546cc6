"""What the background scan judges: every object of the scanned kinds, kept current by one LIST
and then a WATCH per kind, as a client-go informer keeps its store (design.md §14).

A scan that lists every kind each time makes the API server read, encode and send the whole
cluster's workloads, and the scan read and parse them, whether or not anything changed: half of
a steady scan's CPU, and the API server's besides. Kept here, a scan reads nothing; what the API
server sends is what changed. Each object is kept trimmed to what a scan reads of it (its kind,
name, namespace, uid, owners and spec), never its status or managed fields.

A kind is `current` once it is listed, and for as long as its watch runs or is being resumed
from where it left off; when it cannot be listed or watched (an RBAC refusal, the API server
gone) it is not, and the scan that reads it is incomplete (it deletes no report). A watch whose
resourceVersion is too old (410 Gone, after etcd compaction) lists again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from imagegate.signatures import apiserver
from imagegate.trail import reports

logger = logging.getLogger(__name__)

#: Objects per LIST request: a page is parsed in well under a millisecond per object, and a
#: continue token stays valid for minutes (etcd compaction), far longer than a list takes.
PAGE_SIZE = 100
#: Seconds the API server keeps one watch open (timeoutSeconds); then it is resumed from its
#: last resourceVersion. Short, so that a watch a middlebox stalled is replaced within minutes.
WATCH_TIMEOUT = 120
#: Seconds one read of a watch may wait: longer than WATCH_TIMEOUT, so only a stalled one trips.
WATCH_READ_TIMEOUT = WATCH_TIMEOUT + 30.0
#: Seconds before listing or watching a kind again after a failure, by consecutive failures.
RETRY_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
#: The longest watch event line accepted: a Pod is at most 1.5 MiB in etcd.
MAX_EVENT_BYTES = 8 * 1024 * 1024
#: What of an object's metadata a scan reads (reports.object_reference, controlled_by...).
KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "ownerReferences")
#: Strings up to this long in a kept object are shared between objects (`_shared`).
SHARED_STRING_CHARS = 64
#: What of an object a scan never reads.
DROPPED_FIELDS = frozenset({"metadata", "status", "apiVersion", "kind"})


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): the kind must be listed again."""


class WatchFailed(Exception):
    """The API server ended a watch with an error event other than 410."""


def trimmed(item: Mapping[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """An object as a scan reads it: apiVersion and kind set (lists omit them), its status and
    all but KEPT_METADATA dropped (managed fields and last-applied annotations are often most
    of an object)."""
    metadata = item.get("metadata")
    kept = (
        {key: metadata[key] for key in KEPT_METADATA if key in metadata}
        if isinstance(metadata, Mapping)
        else {}
    )
    body = {
        sys.intern(key): _shared(value) for key, value in item.items() if key not in DROPPED_FIELDS
    }
    return {**body, "apiVersion": api_version, "kind": kind, "metadata": kept}


def _shared(value: Any) -> Any:
    """`value` with its keys, and its short strings, interned: each object is parsed on its
    own, so every Pod would hold its own "terminationMessagePath", "IfNotPresent" and image
    names. Shared, a kept Pod takes half the memory (1.4 KiB against 2.9, design.md §14)
    for about 5 µs when it arrives. Interned strings go when nothing refers to them any more."""
    if isinstance(value, dict):
        return {sys.intern(key): _shared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shared(item) for item in value]
    if isinstance(value, str) and len(value) <= SHARED_STRING_CHARS:
        return sys.intern(value)
    return value


def _key(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("uid") or f"{metadata.get('namespace')}/{metadata.get('name')}")


@dataclass
class _Kind:
    kind: str
    api_version: str
    path: str
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Where the watch resumes; "" until listed (and after a 410: list again).
    resource_version: str = ""
    current: bool = False


class WorkloadInventory:
    """Every object of `reports.SCANNED`, trimmed; `run()` keeps it current, `refresh()` lists
    it once (a scan with no inventory running, `imagegate` tests)."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        kinds: Mapping[tuple[str, str], tuple[str, str]] = reports.SCANNED,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._api = api
        self._sleep = sleep
        self._kinds = [
            _Kind(
                kind=kind,
                api_version=version,
                path=f"/api/{version}/{plural}" if version == "v1" else f"/apis/{version}/{plural}",
            )
            for (_, kind), (version, plural) in kinds.items()
        ]
        #: Set while `run()` runs: then a scan reads what is kept instead of listing.
        self.running = False
        #: Bumped by every change kept (tests and the scan's log).
        self.changes = 0
        #: Kinds listed so far: one each at the start, and one per expired or failed watch.
        self.lists = 0
        self._listed = asyncio.Event()

    def objects(self) -> list[dict[str, Any]]:
        """Every object kept now (a copy of the list: the watches go on changing the store)."""
        return [obj for kept in self._kinds for obj in kept.objects.values()]

    def not_current(self) -> list[str]:
        """The kinds not known to be current: a scan of them is incomplete."""
        return [kept.kind for kept in self._kinds if not kept.current]

    async def refresh(self, rest: Callable[[], Awaitable[None]] | None = None) -> None:
        """List every kind now, `rest` after each page; a kind that cannot be listed is left
        not current (and logged)."""
        for kept in self._kinds:
            try:
                await self._list(kept, rest)
            except client.ApiException as error:
                kept.current = False
                logger.warning(
                    "background scan cannot list %s: %s (%s)", kept.path, error.reason, error.status
                )

    async def wait_listed(self, timeout: float) -> None:
        """Until every kind was listed once, or `timeout` passed (the scan then goes on with
        what there is, incomplete)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listed.wait(), timeout)

    async def run(self, rest: Callable[[], Awaitable[None]] | None = None) -> None:
        """List and watch every kind until cancelled."""
        self.running = True
        try:
            async with asyncio.TaskGroup() as group:
                for kept in self._kinds:
                    group.create_task(self._keep(kept, rest))
        finally:
            self.running = False

    async def _keep(self, kept: _Kind, rest: Callable[[], Awaitable[None]] | None) -> None:
        failures = 0
        while True:
            try:
                if not kept.resource_version:
                    await self._list(kept, rest)
                    if all(k.resource_version for k in self._kinds):
                        self._listed.set()
                await self._watch(kept)
                failures = 0
            except WatchExpired:
                logger.info("watch of %s expired: listing it again", kept.path)
                kept.resource_version = ""
            except Exception as error:  # never let the store die: the next attempt may do
                kept.current = False
                delay = RETRY_BACKOFF[min(failures, len(RETRY_BACKOFF) - 1)]
                failures += 1
                logger.warning(
                    "background scan cannot list or watch %s (%s); again in %gs",
                    kept.path,
                    _describe(error),
                    delay,
                )
                if isinstance(error, client.ApiException) and error.status == 410:
                    kept.resource_version = ""
                await self._sleep(delay)

    async def _list(self, kept: _Kind, rest: Callable[[], Awaitable[None]] | None) -> None:
        """Read the kind PAGE_SIZE objects at a time (never a whole kind at once: parsing one
        holds the interpreter for seconds), and replace what is kept with it."""
        objects: dict[str, dict[str, Any]] = {}
        continue_from = ""  # the list's `continue` token; "" asks for the first page
        while True:
            query: dict[str, str | int] = {"limit": PAGE_SIZE}
            if continue_from:
                query["continue"] = continue_from
            page = await asyncio.to_thread(apiserver.ApiServer(self._api).get, kept.path, query)
            for item in page.get("items") or []:
                obj = trimmed(item, kept.api_version, kept.kind)
                objects[_key(obj)] = obj
            if rest is not None:
                await rest()
            metadata = page.get("metadata") or {}
            continue_from = metadata.get("continue") or ""
            if not continue_from:
                break
        kept.objects = objects
        kept.resource_version = str(metadata.get("resourceVersion") or "")
        kept.current = True
        self.changes += 1
        self.lists += 1

    async def _watch(self, kept: _Kind) -> None:
        """One watch of the kind from where the store is, until the API server ends it."""
        query: dict[str, str | int] = {
            "resourceVersion": kept.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": WATCH_TIMEOUT,
        }
        server = apiserver.ApiServer(self._api)
        response = await asyncio.to_thread(server.open_watch, kept.path, query, WATCH_READ_TIMEOUT)
        kept.current = True
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()
        # A thread of its own, not the default executor's: it blocks for the watch's life.
        reader = threading.Thread(
            target=_read_events,
            args=(response, loop, events),
            name=f"watch-{kept.kind}",
            daemon=True,
        )
        reader.start()
        try:
            while (event := await events.get()) is not None:
                if isinstance(event, BaseException):
                    raise event
                self._apply(kept, event)
        finally:
            _close(response)

    def _apply(self, kept: _Kind, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, Mapping):
            raise WatchFailed(f"a watch event without an object: {str(event)[:200]}")
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise WatchExpired(str(obj.get("message", "")))
            raise WatchFailed(f"{obj.get('code')}: {obj.get('message')}")
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if kind in ("ADDED", "MODIFIED"):
            kept_obj = trimmed(obj, kept.api_version, kept.kind)
            kept.objects[_key(kept_obj)] = kept_obj
            self.changes += 1
        elif kind == "DELETED":
            kept.objects.pop(_key(obj), None)
            self.changes += 1
        elif kind != "BOOKMARK":
            raise WatchFailed(f"a watch event of type {kind!r}")
        if version:
            kept.resource_version = version


def event_lines(response: Any) -> Iterator[bytes]:
    """The watch body's lines, as the API server flushes them (one event each). An unfinished
    line is kept as its pieces and joined once its end comes: a line sent in many small chunks
    costs its length, not its length times the number of chunks."""
    pieces: list[bytes] = []  # of the line not ended yet
    pending = 0  # their length
    for chunk in response.stream(None, decode_content=False):
        if pending + len(chunk) > MAX_EVENT_BYTES:
            raise WatchFailed(f"a watch event over {MAX_EVENT_BYTES} bytes")
        *complete, rest = chunk.split(b"\n")
        if complete:
            complete[0] = b"".join([*pieces, complete[0]])
            pieces, pending = [], 0
            yield from (line for line in complete if line.strip())
        if rest:
            pieces.append(rest)
            pending += len(rest)
    last = b"".join(pieces)
    if last.strip():
        yield last


def _read_events(
    response: Any,
    loop: asyncio.AbstractEventLoop,
    events: asyncio.Queue[dict[str, Any] | BaseException | None],
) -> None:
    """The reading thread: each event parsed here (off the event loop), then handed to it."""
    outcome: BaseException | None = None
    try:
        for line in event_lines(response):
            loop.call_soon_threadsafe(events.put_nowait, json.loads(line))
    except BaseException as error:  # handed over and raised there; closing the response ends here
        outcome = error
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(events.put_nowait, outcome)


def _close(response: Any) -> None:
    """End a watch from the loop's side: the reading thread's read returns, and it exits."""
    with contextlib.suppress(Exception):
        response.shutdown()  # unblocks a read in progress (urllib3 >= 2.3)
    with contextlib.suppress(Exception):
        response.close()  # not back to the pool: a connection shut mid-read is no use


def _describe(error: BaseException) -> str:
    if isinstance(error, client.ApiException):
        return f"{error.reason} ({error.status})"
    return repr(error)
