"""The decision log: every denial, warning and rewrite; plain admissions as `--log-admits` says."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from imagegate.admission import builder, decisions, reviewers
from imagegate.admission import review as admission
from imagegate.commands import cli
from imagegate.policy import engine, model
from imagegate.policy.compile import compile_policy
from imagegate.trail import logs, scan

LOGGER = "imagegate.admission.decisions"


class Policies:
    def __init__(self, *policies: engine.CompiledPolicy) -> None:
        self._policies = policies

    def policies(self) -> tuple[engine.CompiledPolicy, ...]:
        return self._policies

    async def namespace_labels(self, namespace: str) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": namespace}


def policy(name: str, mode: str, *, rewrite: bool = False) -> engine.CompiledPolicy:
    spec: dict[str, Any] = {
        "mode": mode,
        "sources": [{"name": "ours", "images": ["ghcr.io/ours/**", "cgr.dev/chainguard/**"]}],
    }
    if rewrite:
        spec["rewrites"] = [{"from": "docker.io/library/python", "to": "cgr.dev/chainguard/python"}]
    return compile_policy(
        model.parse_policy_document(
            {
                "apiVersion": "imagegate.dev/v1alpha1",
                "kind": "ClusterImagePolicy",
                "metadata": {"name": name},
                "spec": spec,
            }
        )
    )


def review(image: str, uid: str = "u") -> admission.AdmissionReview:
    return admission.AdmissionReview.model_validate(
        builder.review_for(builder.pod("p", image), namespace="default", uid=uid)
    )


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def decision_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and hasattr(r, "decision")]


def count_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and hasattr(r, "admissions")]


async def admit_many(validator: reviewers.Validator, count: int, image: str) -> None:
    for n in range(count):
        await validator(review(image, uid=f"u-{n}"), 0)


async def test_sampled_logs_one_plain_admission_in_100_and_every_denial(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = decisions.DecisionLog("sampled", clock=clock)
    validator = reviewers.Validator(Policies(policy("enforce", "enforce")), decisions=log)
    caplog.set_level(logging.INFO, logger=LOGGER)
    await admit_many(validator, 250, "ghcr.io/ours/app:1")
    await admit_many(validator, 3, "docker.io/library/nginx:1")  # denied: not a source
    lines = decision_lines(caplog)
    assert [r.decision["allowed"] for r in lines] == [True, True, True, False, False, False]
    assert [r.decision["uid"] for r in lines[:3]] == ["u-0", "u-100", "u-200"]
    assert count_lines(caplog) == []
    clock.now += decisions.COUNT_INTERVAL
    log.flush()
    (count,) = count_lines(caplog)
    assert count.getMessage() == "250 admissions allowed in the last 60 s (3 logged)"
    assert count.admissions == {"allowed": 250, "logged": 3, "seconds": 60.0}


async def test_none_logs_no_plain_admission_but_counts_them_and_all_logs_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    quiet = decisions.DecisionLog("none", clock=clock)
    validator = reviewers.Validator(Policies(policy("enforce", "enforce")), decisions=quiet)
    await admit_many(validator, 10, "ghcr.io/ours/app:1")
    assert decision_lines(caplog) == []
    # A late window is closed by the next admission when no background task did it.
    clock.now += 61
    await admit_many(validator, 1, "ghcr.io/ours/app:1")
    assert count_lines(caplog)[0].admissions["allowed"] == 10

    caplog.clear()
    loud = reviewers.Validator(
        Policies(policy("enforce", "enforce")), decisions=decisions.DecisionLog("all")
    )
    await admit_many(loud, 10, "ghcr.io/ours/app:1")
    assert len(decision_lines(caplog)) == 10


async def test_warnings_and_rewrites_are_always_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    quiet = decisions.DecisionLog("none")
    warned = reviewers.Validator(Policies(policy("warn", "warn")), decisions=quiet)
    await admit_many(warned, 2, "docker.io/library/nginx:1")
    rewriter = reviewers.Mutator(Policies(policy("hard", "enforce", rewrite=True)), decisions=quiet)
    await rewriter(review("python:3.12"), 0)
    lines = decision_lines(caplog)
    assert [(r.decision["webhook"], r.decision["allowed"]) for r in lines] == [
        ("validate", True),
        ("validate", True),
        ("mutate", True),
    ]
    assert lines[0].decision["warnings"]
    assert lines[2].decision["images"][0]["outcome"] == "rewritten"


def test_the_count_line_is_one_json_object() -> None:
    record = logging.LogRecord(LOGGER, logging.INFO, __file__, 1, "n allowed", (), None)
    record.admissions = {"allowed": 7, "logged": 1, "seconds": 60.0}
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["admissions"] == {"allowed": 7, "logged": 1, "seconds": 60.0}


def test_run_takes_the_flags_with_their_defaults() -> None:
    parser = cli.build_parser()
    base = ["run", "--tls-cert", "c", "--tls-key", "k"]
    defaults = parser.parse_args(base)
    assert defaults.log_admits == "sampled"
    assert defaults.stale_digest_ttl == 3600.0
    assert defaults.mutate_budget is None
    assert defaults.scan_duty == scan.DUTY
    assert parser.parse_args([*base, "--scan-duty", "0.2"]).scan_duty == 0.2
    for refused in ("0", "1.5", "nan"):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, "--scan-duty", refused])
    given = parser.parse_args(
        [*base, "--log-admits", "all", "--stale-digest-ttl", "60", "--mutate-budget", "2"]
    )
    assert (given.log_admits, given.stale_digest_ttl, given.mutate_budget) == ("all", 60.0, 2.0)


@pytest.mark.parametrize(
    "bad",
    [["--mutate-budget", "0"], ["--mutate-budget", "9"], ["--stale-digest-ttl", "-1"]],
    ids=["budget-zero", "budget-past-deadline", "negative-ttl"],
)
def test_run_refuses_bounds_that_make_no_sense(
    bad: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = tmp_path / "c", tmp_path / "k"
    cert.write_text("c")
    key.write_text("k")
    status = cli.main(["run", "--tls-cert", str(cert), "--tls-key", str(key), *bad])
    assert status == 2
    assert bad[0] in capsys.readouterr().err
