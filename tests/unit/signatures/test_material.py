"""Cluster material's cache stays bounded whatever names Pods and policies use."""

from __future__ import annotations

from kubernetes import client

from imagegate.signatures import material


def test_the_cache_keeps_at_most_max_entries_newest_first() -> None:
    reader = material.KubernetesMaterial(client.ApiClient())
    for index in range(material.MAX_ENTRIES + 10):
        reader._remember(("Secret", "team", f"pull-{index}"), (0.0, {}))
    assert len(reader._cache) == material.MAX_ENTRIES
    assert ("Secret", "team", "pull-0") not in reader._cache
    assert ("Secret", "team", f"pull-{material.MAX_ENTRIES + 9}") in reader._cache
