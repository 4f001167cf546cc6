"""Cluster material: a bounded cache, and the last good value served through an outage."""

from __future__ import annotations

import asyncio
import logging

import pytest
import urllib3
from kubernetes import client

from imagegate.signatures import material


def test_the_cache_keeps_at_most_max_entries_newest_first() -> None:
    reader = material.KubernetesMaterial(client.ApiClient())
    for index in range(material.MAX_ENTRIES + 10):
        material._remember(reader._cache, ("Secret", "team", f"pull-{index}"), (0.0, {}))
    assert len(reader._cache) == material.MAX_ENTRIES
    assert ("Secret", "team", "pull-0") not in reader._cache
    assert ("Secret", "team", f"pull-{material.MAX_ENTRIES + 9}") in reader._cache


class FlakyApi:
    """Answers with `data` until `failure` is set; then raises it."""

    def __init__(self) -> None:
        self.failure: BaseException | None = None
        self.reads = 0

    def __call__(self, kind: str, namespace: str, name: str) -> dict[str, str]:
        self.reads += 1
        if self.failure is not None:
            raise self.failure
        return {"cosign.pub": "a2V5"}


def reader_at(now: list[float], api: FlakyApi) -> material.KubernetesMaterial:
    reader = material.KubernetesMaterial(client.ApiClient(), clock=lambda: now[0])
    reader._read = api  # type: ignore[method-assign]
    return reader


REFUSED = urllib3.exceptions.MaxRetryError(None, "/api", reason=ConnectionRefusedError())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "failure",
    [REFUSED, ConnectionResetError(), client.ApiException(status=503, reason="Unavailable")],
)
def test_an_unreachable_api_server_serves_the_last_good_value_for_a_bounded_time(
    failure: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    now, api = [0.0], FlakyApi()
    reader = reader_at(now, api)
    assert asyncio.run(reader.read("team", "cosign", "cosign.pub")) == b"key"
    api.failure = failure
    caplog.set_level(logging.WARNING, logger=material.__name__)
    for second in (61.0, 100.0, 200.0, material.TTL + material.STALE_FOR - 1):
        now[0] = second
        assert asyncio.run(reader.read("team", "cosign", "cosign.pub")) == b"key"
    assert sum("unreachable" in r.message for r in caplog.records) == 1  # logged once
    now[0] = material.TTL + material.STALE_FOR + 1
    with pytest.raises(material.MaterialError, match=r"unreachable|Unavailable"):
        asyncio.run(reader.read("team", "cosign", "cosign.pub"))


def test_the_default_stale_window_outlasts_a_minute_long_outage() -> None:
    assert material.STALE_FOR >= 60.0


def test_a_transport_error_without_a_good_value_is_a_material_error() -> None:
    now, api = [0.0], FlakyApi()
    api.failure = REFUSED
    with pytest.raises(material.MaterialError, match="unreachable"):
        asyncio.run(reader_at(now, api).read("team", "cosign", "cosign.pub"))


def test_a_definite_answer_is_not_papered_over_by_the_stale_value() -> None:
    now, api = [0.0], FlakyApi()
    reader = reader_at(now, api)
    asyncio.run(reader.read("team", "cosign", "cosign.pub"))
    api.failure = client.ApiException(status=404, reason="Not Found")
    now[0] = material.TTL + 1
    with pytest.raises(material.MaterialError, match="Not Found"):
        asyncio.run(reader.read("team", "cosign", "cosign.pub"))
