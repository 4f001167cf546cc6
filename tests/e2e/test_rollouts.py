"""Rollouts and rotation (imagegate issue #11, items 3 and 6), against the real kube-apiserver and
registry: `imagegate run` as separate processes, stopped with SIGTERM as the kubelet does."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import os
import signal
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubernetes import client

from imagegate.admission import configurations as webhookconfig
from imagegate.cluster import certs
from imagegate.testbed import local
from imagegate.testbed.registry import LocalRegistry
from netproxy import TcpProxy, ThreadedProxy
from support import Cluster, cosign_key_pair, pod_review, post_review, push_random_image

from .conftest import PolicyFactory

pytestmark = pytest.mark.controlplane


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.05)


def status_of(url: str) -> int | None:
    """The HTTP status, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


@pytest.fixture
def stalling_registry(registry: LocalRegistry) -> Iterator[TcpProxy]:
    """The local registry behind a proxy whose answers can be held back (`down`)."""
    host, port = registry.address.rsplit(":", 1)
    with ThreadedProxy(host, int(port)) as proxy:
        yield proxy


# -- 6: SIGTERM drains ---------------------------------------------------------------------------


def test_sigterm_answers_the_request_in_flight_fails_readyz_and_exits_0(
    cluster: Cluster,
    api: client.ApiClient,
    crds: None,
    namespace: str,
    image_policy: PolicyFactory,
    registry: LocalRegistry,
    stalling_registry: TcpProxy,
    crane: Path,
    cosign: Path,
    tmp_path: Path,
) -> None:
    cosign_key_pair(cosign, tmp_path)
    client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="cosign"),
            string_data={"cosign.pub": (tmp_path / "cosign.pub").read_text()},
        ),
    )
    push_random_image(crane, registry.address, "rollouts/slow", "v1", tmp_path)
    image = f"{stalling_registry.address}/rollouts/slow:v1"
    # The chart's grace period with its defaults: max(30, drain 5 + webhook timeout 10 + 5).
    grace = 30.0
    with local.operator_process(
        cluster.kubeconfig,
        tmp_path / "operator",
        insecure_registries=[stalling_registry.address],
        env={"IMAGEGATE_DRAIN_DELAY": "4"},
    ) as running:
        image_policy(
            namespace,
            "signed",
            {
                "sources": [
                    {
                        "name": "team",
                        "images": [f"{stalling_registry.address}/rollouts/*"],
                        "signatures": {
                            "keys": [{"secretRef": {"name": "cosign"}}],
                            "requireTransparencyLog": False,
                        },
                    }
                ]
            },
        )
        stalling_registry.down.first_byte_delay = 2.0  # every registry answer is held back
        before = stalling_registry.connections
        answers: list[dict[str, Any] | BaseException] = []

        def in_flight() -> None:
            try:
                answers.append(
                    post_review(
                        running.url + "/validate",
                        pod_review(namespace, image),
                        running.ssl_context(),
                    )
                )
            except BaseException as error:  # the assertion below names it
                answers.append(error)

        requester = threading.Thread(target=in_flight, daemon=True)
        requester.start()
        wait_for(
            lambda: stalling_registry.connections > before, 10, "the review reaches the registry"
        )
        pid = running.process.pid
        assert pid is not None
        signalled = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        readiness: list[int | None] = []
        during_drain: dict[str, Any] | None = None
        first_503: float | None = None
        while running.process.exit_code() is None and time.monotonic() - signalled < grace:
            readiness.append(status_of(running.health_url + "/readyz"))
            if readiness[-1] == 503 and first_503 is None:
                first_503 = time.monotonic() - signalled
                # Still served while the Service catches up (denied: not from a trusted source).
                outside = pod_review(namespace, f"{registry.address}/rollouts/slow:v1", name="q")
                outside_uid = outside["request"]["uid"]
                during_drain = post_review(
                    running.url + "/validate", outside, running.ssl_context()
                )
            time.sleep(0.1)
        requester.join(timeout=15)
        exit_code = running.process.exit_code()
        exited_after = time.monotonic() - signalled
    print(
        f"SIGTERM drain: exit {exit_code} after {exited_after:.1f}s (grace {grace:.0f}s); "
        f"/readyz 503 after {first_503}s; "
        f"/readyz polls: {readiness.count(200)} x 200, {readiness.count(503)} x 503; "
        f"answer: allowed={answers[0].get('allowed') if isinstance(answers[0], dict) else None}"
    )

    assert len(answers) == 1, answers
    assert isinstance(answers[0], dict), answers
    assert answers[0]["uid"]  # an AdmissionReview answer, not a dropped connection
    assert 503 in readiness, readiness  # the Service took it out while it went on serving
    assert 200 not in readiness[readiness.index(503) :], readiness  # and never ready again
    assert during_drain is not None
    assert during_drain["uid"] == outside_uid  # a new request is answered during the drain delay
    assert exit_code == 0  # exited by itself, before the kubelet's SIGKILL at the grace period


# -- 3: certificate rotation with overlap --------------------------------------------------------


class BundleTrustingClient:
    """Handshakes with each replica in turn, trusting only the caBundle the webhook configuration
    publishes (read from the API server before every handshake), as the API server does."""

    def __init__(self, api: client.ApiClient, configuration: str, server_name: str) -> None:
        self._admission = client.AdmissionregistrationV1Api(api)
        self._configuration = configuration
        self._server_name = server_name
        self.handshakes = 0
        self.failures: list[str] = []
        #: Per replica port: the DER certificate it served last.
        self.served: dict[int, bytes] = {}
        self._stop = threading.Event()

    def bundle(self) -> bytes:
        found = self._admission.read_validating_webhook_configuration(self._configuration)
        return base64.b64decode(found.webhooks[0].client_config.ca_bundle)

    def request(self, port: int) -> None:
        context = ssl.create_default_context(cadata=self.bundle().decode())
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=self._server_name) as tls,
            ):
                self.handshakes += 1
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                self.served[port] = der
                tls.sendall(
                    b"GET /healthz HTTP/1.1\r\nHost: imagegate\r\nConnection: close\r\n\r\n"
                )
                status = tls.recv(64).split(b"\r\n", 1)[0]
                if not status.startswith(b"HTTP/1.1 200"):
                    self.failures.append(f"port {port}: {status!r}")
        except (OSError, ssl.SSLError) as error:
            self.failures.append(f"port {port}: {error}")

    def stream(self, ports: list[int]) -> threading.Thread:
        def run() -> None:
            deadline = time.monotonic() + 120  # bounded, whatever the test does
            while not self._stop.is_set() and time.monotonic() < deadline:
                for port in ports:
                    self.request(port)
                time.sleep(0.02)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def stop(self, thread: threading.Thread) -> None:
        self._stop.set()
        thread.join(timeout=15)


@pytest.fixture
def webhook_configurations(api: client.ApiClient, namespace: str) -> Iterator[str]:
    """Both configurations, named as `--webhook-configuration` says, matching nothing."""
    name = f"imagegate-{namespace}"
    mutating, validating = webhookconfig.configurations(
        name, "https://127.0.0.1:1", b"", selector={"matchLabels": {"nobody": "has-this"}}
    )
    admission = client.AdmissionregistrationV1Api(api)
    admission.create_mutating_webhook_configuration(mutating)  # type: ignore[arg-type]
    admission.create_validating_webhook_configuration(validating)  # type: ignore[arg-type]
    try:
        yield name
    finally:
        admission.delete_mutating_webhook_configuration(name)
        admission.delete_validating_webhook_configuration(name)


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def test_a_rotation_fails_no_handshake_and_both_replicas_serve_the_new_certificate(
    cluster: Cluster,
    api: client.ApiClient,
    namespace: str,
    webhook_configurations: str,
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(api)

    def replica(name: str) -> contextlib.AbstractContextManager[local.LocalOperator]:
        return local.operator_process(
            cluster.kubeconfig,
            tmp_path / name,
            certificate_args=[
                "--tls-secret=imagegate-tls",
                "--service-name=imagegate",
                f"--webhook-configuration={webhook_configurations}",
                f"--tls-dir={tmp_path / name / 'certs'}",
            ],
            env={"POD_NAMESPACE": namespace, "IMAGEGATE_CERTIFICATE_CHECK_INTERVAL": "0.5"},
        )

    with replica("a") as first, replica("b") as second:
        ports = [int(r.url.rsplit(":", 1)[1]) for r in (first, second)]
        watcher = BundleTrustingClient(api, webhook_configurations, f"imagegate.{namespace}.svc")
        old_ca = watcher.bundle()
        stream = watcher.stream(ports)
        wait_for(lambda: watcher.handshakes >= 10, 20, "handshakes before the rotation")
        core.delete_namespaced_secret("imagegate-tls", namespace)  # a forced rotation

        def new_certificate() -> bytes | None:
            try:
                secret = core.read_namespaced_secret("imagegate-tls", namespace)
            except client.ApiException:
                return None
            return _der(base64.b64decode(secret.data["tls.crt"]))

        def both_serve_the_new_one() -> bool:
            new = new_certificate()
            return new is not None and all(watcher.served.get(port) == new for port in ports)

        wait_for(both_serve_the_new_one, 60, "both replicas serve the new certificate")
        rotated_at = watcher.handshakes
        wait_for(lambda: watcher.handshakes >= rotated_at + 10, 20, "handshakes after the rotation")
        watcher.stop(stream)
        bundle = watcher.bundle()

    print(f"rotation: {watcher.handshakes} handshakes, {len(watcher.failures)} failed")
    assert watcher.failures == []
    published = x509.load_pem_x509_certificates(bundle)
    assert len(published) == 2  # the new CA, and the old one until the grace is over
    assert x509.load_pem_x509_certificate(old_ca) in published


def test_the_previous_ca_leaves_the_bundle_once_its_grace_is_over(
    api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    def managed(now: datetime.datetime | None = None) -> certs.SelfManagedTLS:
        made = certs.SelfManagedTLS(
            api,
            namespace=namespace,
            secret_name="imagegate-tls",
            service_name="imagegate",
            webhook_configuration=f"imagegate-{namespace}",
            directory=tmp_path,
        )
        return made if now is None else dataclasses.replace(made, clock=lambda: now)

    old_ca = managed().ensure()
    client.CoreV1Api(api).delete_namespaced_secret("imagegate-tls", namespace)
    new_ca = managed().ensure()  # the old CA is this replica's: kept as the previous one
    assert managed().bundle() == new_ca + old_ca
    soon = datetime.datetime.now(datetime.UTC) + certs.PREVIOUS_CA_GRACE / 2
    assert managed(soon).bundle(managed(soon).refresh()) == new_ca + old_ca
    later = datetime.datetime.now(datetime.UTC) + certs.PREVIOUS_CA_GRACE * 2
    assert managed(later).bundle(managed(later).refresh()) == new_ca
    assert managed().ensure() == new_ca  # the CA itself stays; only the previous one went
    assert managed().bundle() == new_ca
