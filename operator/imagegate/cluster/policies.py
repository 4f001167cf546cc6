"""The policy side of the operator: policies and namespaces listed and watched into a cache.

A policy that fails to compile (the CRD schema and the `/validate-policy` webhook catch most
mistakes at apply time, but a policy can still arrive unchecked: written while imagegate was down,
or stored before it was installed) never switches enforcement off. An invalid edit keeps the last
good version this replica compiled (`Ready` reason `InvalidKeptPrevious`); a policy with no good
version here (new, or an edit pending when this replica started) fails closed: every image in its
scope is a violation saying why (`InvalidDenying`).

Policies compile in a worker thread (a policy of thousands of globs takes seconds), and only when
what compiling reads changed: status writes and metadata-only edits do not recompile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from imagegate.cluster import resources
from imagegate.errors import ImagegateError
from imagegate.policy import compile as policy_compile
from imagegate.policy import engine, model
from imagegate.signatures import apiserver

logger = logging.getLogger(__name__)

PolicyKey = tuple[str | None, str]  # (namespace or None for cluster policies, name)
#: Told of each change to a `PolicyCache`: ("policy", key, compiled or None) or ("namespace",
#: name, labels or None). The webhook workers' feed (workers.py).
CacheObserver = Callable[[tuple[str, Any, Any]], None]
PLURALS = {
    model.CLUSTER_KIND: resources.CLUSTER_PLURAL,
    model.NAMESPACED_KIND: resources.NAMESPACED_PLURAL,
}

#: Module-level so tests can slow or break compiling (`monkeypatch.setattr(policies, ...)`).
compile_resource = policy_compile.compile_resource


class PolicyCache:
    """The compiled policies and namespace labels the webhooks decide with (a `PolicySource`)."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._policies: dict[PolicyKey, engine.CompiledPolicy] = {}
        self._labels: dict[str, dict[str, str]] = {}
        self.observers: list[CacheObserver] = []
        #: `policies()` until a policy changes.
        self._set: engine.PolicySet | None = None

    def items(self) -> list[tuple[PolicyKey, engine.CompiledPolicy]]:
        return list(self._policies.items())

    def namespaces(self) -> dict[str, dict[str, str]]:
        return dict(self._labels)

    def _tell(self, change: tuple[str, Any, Any]) -> None:
        for observer in self.observers:
            observer(change)

    def policies(self) -> Sequence[engine.CompiledPolicy]:
        """One `PolicySet` until the next change, so that what applies where is kept."""
        if self._set is None:
            self._set = engine.PolicySet(self._policies.values())
        return self._set

    async def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        labels = self._labels.get(namespace)
        if labels is None:
            # A namespace created a moment ago may not have reached the watch yet.
            server = apiserver.ApiServer(self._api)
            found = await asyncio.to_thread(
                server.get, apiserver.core_path(None, "namespaces", namespace)
            )
            labels = dict((found.get("metadata") or {}).get("labels") or {})
            self._labels[namespace] = labels
        return labels

    def set_namespace(self, name: str, labels: Mapping[str, str] | None) -> None:
        if labels is None:
            self._labels.pop(name, None)
        else:
            self._labels[name] = dict(labels)
        self._tell(("namespace", name, labels))

    def set_policy(self, key: PolicyKey, compiled: engine.CompiledPolicy | None) -> None:
        if compiled is None:
            self._policies.pop(key, None)
        else:
            self._policies[key] = compiled
        self._set = None
        self._tell(("policy", key, compiled))

    def has_good_policy(self, key: PolicyKey) -> bool:
        """Whether a compiled (not broken) version of the policy is in force."""
        found = self._policies.get(key)
        return found is not None and found.broken is None


@dataclass(frozen=True)
class _Compiled:
    """What a policy was last compiled from here, and the status that compiling gave."""

    fingerprint: str
    ready: str
    reason: str
    message: str


class PolicyWatch:
    """The policy events applied to a `PolicyCache`, and each policy's `Ready` status written."""

    def __init__(self, api: client.ApiClient, policy_api: resources.PolicyResources) -> None:
        self.api = api
        self.policy_api = policy_api
        self.cache = PolicyCache(api)
        #: Told when a policy changes (the background scan), once it runs.
        self.policy_listeners: list[Callable[[], None]] = []
        #: Per policy: what it was compiled from (an event with the same input is not recompiled).
        self.compiled: dict[PolicyKey, _Compiled] = {}
        #: Per policy: the latest event's token; a slower, older compile does not overwrite it.
        self.compiling: dict[PolicyKey, object] = {}
        #: How many policy compilations this replica ran (tests; the log says each one too).
        self.compilations = 0
        #: While loading, status writes run in the background (`flush_status` awaits them).
        self._writing_later = False
        self._status_writes: dict[PolicyKey, tuple[asyncio.Task[None], dict[str, Any]]] = {}

    async def load(self) -> None:
        """List namespaces and policies once, before the webhooks may answer."""
        server = apiserver.ApiServer(self.api)
        objects = client.CustomObjectsApi(self.api)
        # The three lists side by side: each is a round trip on the start path.
        namespaces, *listed = await asyncio.gather(
            asyncio.to_thread(server.get, apiserver.core_path(None, "namespaces")),
            *(self._list(objects, kind, plural) for kind, plural in PLURALS.items()),
        )
        for namespace in namespaces.get("items") or []:
            metadata = namespace.get("metadata") or {}
            if metadata.get("name"):
                self.cache.set_namespace(metadata["name"], metadata.get("labels") or {})
        # Side by side, and the status writes (a round trip each, on a first start or after
        # edits) left running: they held the webhook and /readyz back (design.md §11).
        self._writing_later = True
        try:
            await asyncio.gather(
                *(
                    self.apply({"type": "ADDED", "object": {"kind": kind, **body}})
                    for (kind, _), items in zip(PLURALS.items(), listed, strict=True)
                    for body in items
                )
            )
        finally:
            self._writing_later = False
        logger.info("loaded %d policies", len(self.cache.policies()))

    async def _list(
        self, objects: client.CustomObjectsApi, kind: str, plural: str
    ) -> list[dict[str, Any]]:
        """Every policy of `kind`; none when its CRD is not installed."""
        try:
            listed = await asyncio.to_thread(
                objects.list_cluster_custom_object, model.GROUP, model.VERSION, plural
            )
        except client.ApiException as error:
            if error.status != 404:
                raise
            # No CRD, so no policy of this kind can exist: admitting is the right answer, and
            # refusing to start would deny every Pod in every namespace the webhook sees.
            logger.error(
                "the %s CRD is not installed (%s.%s): no %s can be enforced until it is; "
                "install it from charts/imagegate/crds/",
                kind,
                plural,
                model.GROUP,
                kind,
            )
            return []
        if not isinstance(listed, dict):
            raise ImagegateError(f"listing {plural} returned {type(listed).__name__}")
        return list(listed.get("items", []))

    async def flush_status(self) -> None:
        """Wait for the status writes that loading left running (shutting down; tests)."""
        await asyncio.gather(*(task for task, _ in list(self._status_writes.values())))

    async def apply(self, event: Mapping[str, Any]) -> None:
        body = event.get("object") or {}
        metadata = body.get("metadata", {})
        name = metadata.get("name")
        if not name:
            return
        kind = body.get("kind") or model.CLUSTER_KIND
        namespace = metadata.get("namespace") if kind == model.NAMESPACED_KIND else None
        key: PolicyKey = (namespace, name)
        if event.get("type") == "DELETED":
            self.compiling.pop(key, None)  # a compile still running for it is dropped
            self.compiled.pop(key, None)
            self.cache.set_policy(key, None)
            for listener in self.policy_listeners:
                listener()
            return
        token = self.compiling[key] = object()
        document = {"apiVersion": model.API_VERSION, "kind": kind, **body}
        fingerprint = _fingerprint(document)
        previous = self.compiled.get(key)
        if previous is not None and previous.fingerprint == fingerprint:
            # A status write or a metadata edit: nothing compiling reads has changed.
            if not (previous.reason == "InvalidKeptPrevious" and _reported(body, "InvalidDenying")):
                await self._write_status(
                    namespace, body, previous.ready, previous.reason, previous.message
                )
            return
        try:
            compiled = await self._compile(name, document)
        except ImagegateError as error:
            if self.compiling.get(key) is token:
                outcome = await self._keep_or_deny(key, document, error.user_message)
                self.compiled[key] = _Compiled(fingerprint, *outcome)
            return
        if self.compiling.get(key) is not token:
            return  # a newer event for this policy arrived while this one compiled
        self.cache.set_policy(key, dataclasses.replace(compiled, uid=metadata.get("uid", "")))
        self.compiled[key] = _Compiled(fingerprint, "True", "Compiled", "")
        for listener in self.policy_listeners:
            listener()
        await self._write_status(namespace, body, "True", "Compiled", "")

    async def _compile(self, name: str, document: Mapping[str, Any]) -> engine.CompiledPolicy:
        """Compile in a worker thread: the event loop goes on answering probes and admissions."""
        self.compilations += 1
        started = time.monotonic()
        try:
            return await asyncio.to_thread(compile_resource, document)
        finally:
            logger.info("compiled policy %s in %.2fs", name, time.monotonic() - started)

    async def _keep_or_deny(
        self, key: PolicyKey, body: Mapping[str, Any], error: str
    ) -> tuple[str, str, str]:
        """An invalid policy: keep its last good version, or fail closed in its scope.

        Returns the status it reports: (ready, reason, message).
        """
        name = body["metadata"]["name"]
        if self.cache.has_good_policy(key):
            logger.error("policy %s is invalid (previous version kept): %s", name, error)
            # Replicas disagree when one started after the bad edit (it has no good version): the
            # stricter report stands, or the two would overwrite each other's status forever.
            if not _reported(body, "InvalidDenying"):
                await self._write_status(key[0], body, "False", "InvalidKeptPrevious", error)
            return "False", "InvalidKeptPrevious", error
        broken = policy_compile.compile_broken(body, error)
        self.cache.set_policy(key, broken)
        for listener in self.policy_listeners:
            listener()
        verb = "denied" if broken.mode is engine.Mode.ENFORCE else f"a violation ({broken.mode})"
        logger.error("policy %s is invalid (every image in its scope %s): %s", name, verb, error)
        message = (
            f"{error}; until it is fixed, every image in this policy's scope is {verb} "
            "(by each replica that has no earlier good version of it)"
        )
        await self._write_status(key[0], body, "False", "InvalidDenying", message)
        return "False", "InvalidDenying", message

    async def _write_status(
        self,
        namespace: str | None,
        body: Mapping[str, Any],
        ready: str,
        reason: str,
        message: str,
    ) -> None:
        """Patch observedGeneration and the Ready condition only if they change (no event loop)."""
        metadata = body.get("metadata", {})
        written = body.get("status") or {}
        generation = metadata.get("generation")
        current: dict[str, Any] = next(
            (c for c in written.get("conditions", []) if c.get("type") == "Ready"), {}
        )
        if (
            written.get("observedGeneration") == generation
            and current.get("status") == ready
            and current.get("reason") == reason
            and current.get("message", "") == message
        ):
            return
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        condition = {
            "type": "Ready",
            "status": ready,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now
            if current.get("status") != ready
            else current.get("lastTransitionTime", now),
        }
        patch = {"status": {"observedGeneration": generation, "conditions": [condition]}}
        key: PolicyKey = (namespace, metadata["name"])
        pending = self._status_writes.get(key)
        if pending is not None and _same_status(pending[1], patch):
            return  # kopf's list can come before the write loading left running has landed
        if pending is not None:
            await asyncio.wait({pending[0]})  # an older status must not land after this one
        if self._writing_later:
            task = asyncio.create_task(self._patch_status_later(key, patch))
            self._status_writes[key] = (task, patch)
            task.add_done_callback(lambda _: self._forget_write(key, task))
            return
        await self._patch_status(key, patch)

    def _forget_write(self, key: PolicyKey, task: asyncio.Task[None]) -> None:
        if self._status_writes.get(key, (None,))[0] is task:
            del self._status_writes[key]

    async def _patch_status_later(self, key: PolicyKey, patch: dict[str, Any]) -> None:
        try:
            await self._patch_status(key, patch)
        except Exception as error:  # nobody awaits this write: say why it failed, as an
            # ApiException says (a start-up retry for a status write would be worse)
            logger.warning("cannot update the status of %s: %s", key[1], error)

    async def _patch_status(self, key: PolicyKey, patch: dict[str, Any]) -> None:
        namespace, name = key
        try:
            await asyncio.to_thread(self.policy_api.patch_status, namespace, name, patch)
        except client.ApiException as error:
            # Status is for admins to read; admission does not depend on it.
            logger.warning("cannot update the status of %s: %s", name, error.reason)


def _same_status(written: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """The same generation and Ready condition (its transition time aside)."""

    def meaning(status: Mapping[str, Any]) -> tuple[Any, ...]:
        (condition,) = status["status"]["conditions"]
        kept = {k: v for k, v in condition.items() if k != "lastTransitionTime"}
        return status["status"]["observedGeneration"], sorted(kept.items())

    return meaning(written) == meaning(patch)


def _fingerprint(document: Mapping[str, Any]) -> str:
    """A hash of what compiling reads: kind, name, namespace, uid and spec (not status)."""
    metadata = document.get("metadata") or {}
    read = [
        document.get("kind"),
        metadata.get("name"),
        metadata.get("namespace"),
        metadata.get("uid"),
        document.get("spec"),
    ]
    return hashlib.sha256(json.dumps(read, sort_keys=True, default=str).encode()).hexdigest()


def _reported(body: Mapping[str, Any], reason: str) -> bool:
    """Whether the Ready condition already gives `reason` for this generation."""
    written = body.get("status") or {}
    ready: dict[str, Any] = next(
        (c for c in written.get("conditions", []) if c.get("type") == "Ready"), {}
    )
    generation = body.get("metadata", {}).get("generation")
    return written.get("observedGeneration") == generation and ready.get("reason") == reason
