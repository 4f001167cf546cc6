"""The scan inventory's pure parts: watch lines from a stream cut anywhere, trimmed objects,
and what each watch event does to the store (trail/inventory.py; the wire is in
tests/e2e/test_inventory.py)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from imagegate.trail import inventory


class _Stream:
    """What `event_lines` reads: a response whose body comes in the given pieces."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def stream(self, amt: int | None, decode_content: bool) -> Iterator[bytes]:
        yield from self.pieces


def _event(n: int) -> dict[str, Any]:
    return {"type": "ADDED", "object": {"metadata": {"name": f"p{n}", "note": "é\n" * n}}}


def test_lines_are_whole_events_however_the_body_is_cut() -> None:
    """An HTTP chunk need not hold one event (a proxy may re-chunk): a line cut anywhere, even
    inside a multi-byte character, is put back together before it is parsed."""
    body = b"".join(json.dumps(_event(n)).encode() + b"\n" for n in range(50))
    rng = random.Random(7)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(body)), 300))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        lines = list(inventory.event_lines(_Stream(pieces)))
        assert [json.loads(line) for line in lines] == [_event(n) for n in range(50)]


def test_a_last_line_without_newline_and_blank_lines() -> None:
    lines = inventory.event_lines(_Stream([b"\n", b'{"a": 1}\n\n', b'{"b"', b": 2}"]))
    assert list(lines) == [b'{"a": 1}', b'{"b": 2}']


def test_an_event_past_the_limit_ends_the_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream that never sends a newline must not grow the reader without bound."""
    monkeypatch.setattr(inventory, "MAX_EVENT_BYTES", 1000)
    with pytest.raises(inventory.WatchFailed, match="over 1000 bytes"):
        list(inventory.event_lines(_Stream([b"x" * 600, b"x" * 600])))


def test_trimmed_keeps_what_a_scan_reads() -> None:
    item = {
        "metadata": {
            "name": "api",
            "namespace": "shop",
            "uid": "u-1",
            "resourceVersion": "7",
            "ownerReferences": [{"kind": "ReplicaSet", "name": "api-1", "uid": "u-0"}],
            "managedFields": [{"manager": "kubectl"}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
        },
        "spec": {"containers": [{"name": "app", "image": "redis:7"}]},
        "status": {"phase": "Running"},
    }
    kept = inventory.trimmed(item, "v1", "Pod")
    assert kept == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {key: item["metadata"][key] for key in inventory.KEPT_METADATA},
        "spec": item["spec"],
    }
    assert inventory.trimmed({"metadata": "hostile"}, "v1", "Pod")["metadata"] == {}


def _store() -> tuple[inventory.WorkloadInventory, Any]:
    store = inventory.WorkloadInventory(client.ApiClient())
    return store, store._kinds[0]


def _pod(name: str, version: str, image: str = "redis:7") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": f"u-{name}",
            "resourceVersion": version,
        },
        "spec": {"containers": [{"name": "app", "image": image}]},
    }


def test_events_change_the_store_and_move_its_resource_version() -> None:
    store, pods = _store()
    store._apply(pods, {"type": "ADDED", "object": _pod("a", "5")})
    store._apply(pods, {"type": "MODIFIED", "object": _pod("a", "6", "redis:8")})
    assert pods.objects["u-a"]["spec"]["containers"][0]["image"] == "redis:8"
    assert pods.resource_version == "6"
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
    store._apply(pods, bookmark)
    assert pods.resource_version == "9"
    assert list(pods.objects) == ["u-a"]
    store._apply(pods, {"type": "DELETED", "object": _pod("a", "10")})
    assert pods.objects == {}
    assert pods.resource_version == "10"


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({"type": "ERROR", "object": {"code": 410, "message": "too old"}}, inventory.WatchExpired),
        ({"type": "ERROR", "object": {"code": 500, "message": "etcd"}}, inventory.WatchFailed),
        ({"type": "UPSERTED", "object": {}}, inventory.WatchFailed),
        ({"type": "ADDED", "object": "not an object"}, inventory.WatchFailed),
        ({"type": "ADDED"}, inventory.WatchFailed),
    ],
)
def test_error_and_hostile_events_end_the_watch(event: dict[str, Any], error: type) -> None:
    store, pods = _store()
    pods.resource_version = "3"
    with pytest.raises(error):
        store._apply(pods, event)
    assert pods.resource_version == "3"  # nothing taken from an event refused


def test_kept_objects_share_their_keys_and_short_strings() -> None:
    """Each watch event is parsed on its own: without sharing, every Pod would keep its own
    copy of every key and every "IfNotPresent" (design.md §14, memory)."""

    def parsed(name: str) -> dict[str, Any]:
        container = {"name": "app", "image": "redis:7", "imagePullPolicy": "IfNotPresent"}
        body = {"metadata": {"name": name}, "spec": {"containers": [container]}}
        return dict(json.loads(json.dumps(body)))

    first, second = (inventory.trimmed(parsed(n), "v1", "Pod") for n in ("a", "b"))
    one, other = first["spec"]["containers"][0], second["spec"]["containers"][0]
    assert one == other
    assert one["imagePullPolicy"] is other["imagePullPolicy"]
    assert next(iter(one)) is next(iter(other))  # the key "name" too
    long_value = "x" * (inventory.SHARED_STRING_CHARS + 1)
    kept = inventory.trimmed({"spec": {"note": long_value}}, "v1", "Pod")
    assert kept["spec"]["note"] == long_value
