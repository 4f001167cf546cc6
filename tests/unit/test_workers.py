"""`--workers` (docs/design.md §13): the count `auto` gives, and what the parent's policy cache
tells the workers (imagegate issue #14, item 2)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from imagegate.cluster import policies, workers
from imagegate.commands import cli
from imagegate.policy import compile as policy_compile

USABLE = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", USABLE),  # no quota: the CPUs this process may run on
        ("50000 100000\n", 1),  # half a core rounds up to one worker
        ("150000 100000\n", min(2, USABLE)),
        ("100000000 100000\n", USABLE),  # a quota above the CPUs there are
    ],
)
def test_auto_is_the_cgroup_quota_rounded_up(tmp_path: Path, cpu_max: str, expected: int) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert workers.cpu_limit(path) == expected


def test_auto_without_a_cgroup_file_is_the_usable_cpus(tmp_path: Path) -> None:
    assert workers.cpu_limit(tmp_path / "absent") == USABLE


def test_the_flag_takes_a_count_or_auto_and_defaults_to_one() -> None:
    parser = cli.build_parser()
    tls = ["run", "--tls-cert", "c", "--tls-key", "k"]
    assert parser.parse_args(tls).workers == 1  # today's single process
    assert parser.parse_args([*tls, "--workers", "3"]).workers == 3
    assert parser.parse_args([*tls, "--workers", "auto"]).workers == workers.cpu_limit()
    for wrong in ("0", "-1", "many"):
        with pytest.raises(SystemExit):
            parser.parse_args([*tls, "--workers", wrong])


def _policy(name: str) -> Any:
    return policy_compile.compile_resource(
        {
            "apiVersion": "imagegate.dev/v1alpha1",
            "kind": "ClusterImagePolicy",
            "metadata": {"name": name, "uid": "u"},
            "spec": {
                "sources": [
                    {
                        "name": "a",
                        "images": ["x.io/**"],
                        "signatures": {
                            "keyless": [{"issuer": "https://i", "subjectRegExp": "^https://.*$"}]
                        },
                    }
                ]
            },
        }
    )


def test_the_cache_tells_its_observers_every_change_in_a_form_that_pickles() -> None:
    cache = policies.PolicyCache(None)  # type: ignore[arg-type]  # no reads here
    told: list[tuple[str, Any, Any]] = []
    cache.observers.append(told.append)
    compiled = _policy("p")
    cache.set_policy((None, "p"), compiled)
    cache.set_namespace("shop", {"team": "a"})
    cache.set_policy((None, "p"), None)
    cache.set_namespace("shop", None)
    assert told == [
        ("policy", (None, "p"), compiled),
        ("namespace", "shop", {"team": "a"}),
        ("policy", (None, "p"), None),
        ("namespace", "shop", None),
    ]
    # What goes down a worker's pipe: the compiled policy itself (its patterns included).
    assert pickle.loads(pickle.dumps(told)) == told


@pytest.mark.parametrize(
    "preset", sorted(Path(__file__).parents[2].joinpath("policies").glob("*.yaml")), ids=str
)
def test_every_preset_compiles_to_a_policy_the_workers_can_be_sent(preset: Path) -> None:
    """The parent sends compiled policies (design.md §13): every field of one (globs, RE2
    identities, attestation conditions, memos) must survive pickling, equal."""
    import yaml

    from imagegate.policy import model

    for document in filter(None, yaml.safe_load_all(preset.read_text())):
        compiled = policy_compile.compile_policy(model.parse_policy_document(document))
        assert pickle.loads(pickle.dumps(compiled)) == compiled
