"""imagegate wired into a local cluster by URL: CRDs, the operator process, webhook configs.

Used by `imagegate dev` and the e2e tier. In a real cluster the Helm chart does this.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from imagegate.admission import configurations as webhookconfig
from imagegate.cluster import tls
from imagegate.errors import StartError
from imagegate.policy import crd
from imagegate.testbed import processes

START_TIMEOUT = 60.0


def install_crds(
    api: client.ApiClient,
    *,
    extra: Sequence[dict[str, object]] = (),
    timeout: float = 30.0,
) -> None:
    """Create (or keep) imagegate's CRDs and `extra` ones, and wait until they are served."""
    extensions = client.ApiextensionsV1Api(api)
    documents = [*crd.crds(), *extra]
    for document in documents:
        try:
            extensions.create_custom_resource_definition(document)  # type: ignore[arg-type]
        except client.ApiException as error:
            if error.status != 409:
                raise
    names = [str(document["metadata"]["name"]) for document in documents]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [extensions.read_custom_resource_definition(name) for name in names]
        if all(
            any(c.type == "Established" and c.status == "True" for c in d.status.conditions or [])
            for d in found
            if d.status is not None
        ):
            return
        time.sleep(0.1)
    raise StartError(f"the imagegate CRDs were not established within {timeout:.0f}s")


@dataclass(frozen=True)
class LocalOperator:
    url: str
    ca_pem: bytes
    process: processes.ManagedProcess
    #: Plain HTTP: /healthz, /readyz, /metrics.
    health_url: str = ""

    def metrics(self) -> str:
        with urllib.request.urlopen(self.health_url + "/metrics", timeout=5) as reply:
            text: str = reply.read().decode()
            return text

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode())


@contextlib.contextmanager
def operator_process(
    kubeconfig: Path,
    workdir: Path,
    host: str = "127.0.0.1",
    *,
    insecure_registries: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    certificate_args: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[LocalOperator]:
    """Run `imagegate run` until the block ends (ready: /readyz answers 200).

    By default with a fresh serving certificate for `host`; `certificate_args` (e.g.
    `--tls-secret ...`) replace that, and `ca_pem` is then empty: the operator makes its own.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    ca_pem = b""
    if certificate_args is None:
        ca = tls.CertificateAuthority.create("imagegate-local-ca")
        is_ip = host.replace(".", "").isdigit() or ":" in host
        pair = ca.issue(
            "imagegate", ip_addresses=[host] if is_ip else [], dns_names=[] if is_ip else [host]
        )
        (workdir / "tls.crt").write_bytes(pair.cert_pem)
        (workdir / "tls.key").write_bytes(pair.key_pem)
        ca_pem = ca.cert_pem
        certificate_args = [
            "--tls-cert",
            str(workdir / "tls.crt"),
            "--tls-key",
            str(workdir / "tls.key"),
        ]
    port, health_port = processes.free_port(), processes.free_port()
    process = processes.ManagedProcess(
        "imagegate operator",
        [
            sys.executable,
            "-m",
            "imagegate",
            "run",
            "--kubeconfig",
            str(kubeconfig),
            *certificate_args,
            "--host",
            "127.0.0.1" if host == "127.0.0.1" else "0.0.0.0",
            "--port",
            str(port),
            "--health-port",
            str(health_port),
            *(f"--insecure-registry={address}" for address in insecure_registries),
            *extra_args,
        ],
        workdir / "operator.log",
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    local = LocalOperator(
        f"https://{host}:{port}", ca_pem, process, f"http://127.0.0.1:{health_port}"
    )

    def healthy() -> bool:
        with urllib.request.urlopen(local.health_url + "/readyz", timeout=2) as reply:
            return int(reply.status) == 200

    process.start()
    try:
        process.wait_until(healthy, timeout=START_TIMEOUT, what="serving /healthz")
        yield local
    finally:
        process.stop()


@contextlib.contextmanager
def registered_webhooks(
    api: client.ApiClient,
    operator: LocalOperator,
    name: str,
    selector: dict[str, object],
    *,
    policies: bool = True,
) -> Iterator[None]:
    """The workload webhooks and (`policies`) the policy webhook, until the block ends."""
    mutating, validating = webhookconfig.configurations(
        name, operator.url, operator.ca_pem, selector=selector, policies=policies
    )
    admission = client.AdmissionregistrationV1Api(api)
    # The client accepts plain dicts as bodies; its type hints only name the model classes.
    admission.create_mutating_webhook_configuration(mutating)  # type: ignore[arg-type]
    try:
        admission.create_validating_webhook_configuration(validating)  # type: ignore[arg-type]
        try:
            yield
        finally:
            admission.delete_validating_webhook_configuration(name)
    finally:
        admission.delete_mutating_webhook_configuration(name)
