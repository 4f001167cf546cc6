"""Certificates the operator makes itself (no cert-manager), against the real API server."""

from __future__ import annotations

import base64
import dataclasses
import datetime
from pathlib import Path

import pytest
from cryptography import x509
from kubernetes import client

from imagegate.admission import configurations as webhookconfig
from imagegate.cluster import certs
from imagegate.commands import selftest
from imagegate.testbed import local

pytestmark = pytest.mark.controlplane


def managed(
    api: client.ApiClient, namespace: str, directory: Path, now: datetime.datetime | None = None
) -> certs.SelfManagedTLS:
    tls = certs.SelfManagedTLS(
        api,
        namespace=namespace,
        secret_name="imagegate-tls",
        service_name="imagegate",
        webhook_configuration=f"imagegate-{namespace}",
        directory=directory,
    )
    return tls if now is None else dataclasses.replace(tls, clock=lambda: now)


def test_replicas_share_one_certificate_made_once(
    api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    first = managed(api, namespace, tmp_path / "a")
    ca_pem = first.ensure()
    second = managed(api, namespace, tmp_path / "b")
    assert second.ensure() == ca_pem  # read, not made again
    assert (tmp_path / "a" / "tls.crt").read_bytes() == (tmp_path / "b" / "tls.crt").read_bytes()
    certificate = x509.load_pem_x509_certificate((tmp_path / "a" / "tls.crt").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"imagegate.{namespace}.svc" in names.get_values_for_type(x509.DNSName)


def test_a_certificate_near_its_end_is_renewed(
    api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    old_ca = managed(api, namespace, tmp_path).ensure()
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=340)
    renewed = managed(api, namespace, tmp_path, later).ensure()
    assert renewed != old_ca
    assert managed(api, namespace, tmp_path).ensure() == renewed


def test_the_ca_is_patched_into_both_webhook_configurations(
    api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    tls = managed(api, namespace, tmp_path)
    mutating, validating = webhookconfig.configurations(
        tls.webhook_configuration,
        "https://127.0.0.1:1",
        b"",
        selector={"matchLabels": {"nobody": "has-this"}},
    )
    admission = client.AdmissionregistrationV1Api(api)
    admission.create_mutating_webhook_configuration(mutating)  # type: ignore[arg-type]
    admission.create_validating_webhook_configuration(validating)  # type: ignore[arg-type]
    try:
        ca_pem = tls.ensure()
        tls.patch_ca_bundles(ca_pem)
        expected = base64.b64encode(ca_pem).decode()
        for read in (
            admission.read_mutating_webhook_configuration,
            admission.read_validating_webhook_configuration,
        ):
            found = read(tls.webhook_configuration)
            assert found.webhooks
            assert [w.client_config.ca_bundle for w in found.webhooks] == [expected] * len(
                found.webhooks
            )
    finally:
        admission.delete_mutating_webhook_configuration(tls.webhook_configuration)
        admission.delete_validating_webhook_configuration(tls.webhook_configuration)


def test_selftest_passes_against_the_running_operator(
    operator: local.LocalOperator, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(operator.ca_pem)
    assert selftest.run(operator.url + "/validate", ca_file=ca) == 0
    # The wrong CA is a failure, not a pass.
    other = tmp_path / "other.crt"
    other.write_bytes(certs.tls.CertificateAuthority.create("other").cert_pem)
    assert selftest.run(operator.url + "/validate", ca_file=other) == 1


def test_a_deleted_or_broken_secret_is_made_again(
    api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    tls = managed(api, namespace, tmp_path)
    first = tls.ensure()
    core = client.CoreV1Api(api)
    core.delete_namespaced_secret("imagegate-tls", namespace)
    second = tls.ensure()
    assert second != first
    assert (tmp_path / "ca.crt").read_bytes() == second
    core.patch_namespaced_secret(
        "imagegate-tls", namespace, {"data": {"tls.crt": base64.b64encode(b"junk").decode()}}
    )
    third = tls.ensure()
    assert third not in (first, second)
    x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
