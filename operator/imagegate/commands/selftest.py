"""`imagegate selftest`: ask a running webhook for decisions and check that it answers well.

Run by the chart's `helm test` pod against the Service, so a broken certificate, Service or
policy load shows up at install time rather than at the first Pod. Three probes: a request
imagegate has nothing to judge (must be allowed), a Pod in kube-system (a real decision: allowed
or denied, but answered for the right uid and never an internal error), and a malformed body
(must be refused with 400).
"""

from __future__ import annotations

import json
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO

from imagegate.admission import builder


def _probe(obj: dict[str, Any] | None, operation: str, namespace: str) -> dict[str, Any]:
    return builder.review_for(
        obj,
        operation=operation,
        namespace=namespace,
        name="imagegate-selftest",
        group_kind=("", "Pod"),
        dry_run=True,
        username="imagegate-selftest",
    )


def _post(url: str, body: bytes, context: ssl.SSLContext, timeout: float) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        # run() accepts only https:// URLs, so no file: or custom scheme is ever opened.
        with urllib.request.urlopen(request, context=context, timeout=timeout) as reply:  # nosec B310
            return int(reply.status), json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, None


def run(url: str, *, ca_file: Path | None, timeout: float = 10.0, out: TextIO = sys.stdout) -> int:
    if not url.startswith("https://"):
        out.write(f"FAILED: {url!r} is not an https:// URL (the webhooks serve HTTPS only)\n")
        return 2
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "imagegate-selftest", "namespace": "kube-system"},
        "spec": {"containers": [{"name": "probe", "image": "cgr.dev/chainguard/static:latest"}]},
    }
    failures = []
    for what, review in (
        ("nothing to judge", _probe(None, "DELETE", "default")),
        ("a Pod", _probe(pod, "CREATE", "kube-system")),
    ):
        try:
            status, answer = _post(url, json.dumps(review).encode(), context, timeout)
        except (OSError, ValueError) as error:
            failures.append(f"{what}: no answer from {url}: {error}")
            continue
        response = (answer or {}).get("response") or {}
        code = (response.get("status") or {}).get("code")
        if status != 200 or response.get("uid") != review["request"]["uid"]:
            failures.append(f"{what}: HTTP {status}, answer for uid {response.get('uid')!r}")
        elif not isinstance(response.get("allowed"), bool) or code in (500, 504):
            failures.append(f"{what}: {response.get('status', {}).get('message', response)}")
        elif what == "nothing to judge" and not response["allowed"]:
            failures.append(f"{what}: denied ({response.get('status')})")
        else:
            out.write(f"ok: {what}: allowed={response['allowed']}\n")
    try:
        status, _ = _post(url, b"{not json", context, timeout)
        if status != 400:
            failures.append(f"malformed body: HTTP {status}, expected 400")
        else:
            out.write("ok: a malformed body is refused\n")
    except OSError as error:
        failures.append(f"malformed body: no answer: {error}")
    for failure in failures:
        out.write(f"FAILED: {failure}\n")
    return 1 if failures else 0
