"""Serving certificates the operator makes itself, when cert-manager is not used.

One CA and one serving certificate for `<service>.<namespace>.svc`, made with `cryptography`
and kept in a Secret, so that every replica serves the same certificate and a restart does not
change the CA. The first replica to start creates the Secret; the others lose the race (409)
and read it. Each replica writes the files its HTTPS server loads (the server reloads them when
they change) and patches the CA into the `caBundle` of both webhook configurations, which the
Helm chart owns. Renewal: a certificate within `RENEW_BEFORE` of its end is replaced.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from cryptography import x509
from kubernetes import client

from imagegate.admission import records as audit
from imagegate.admission import server
from imagegate.cluster import tls
from imagegate.errors import ImagegateError

logger = logging.getLogger(__name__)

CA_KEY, CERT_KEY, KEY_KEY, CA_KEY_KEY = "ca.crt", "tls.crt", "tls.key", "ca.key"
RENEW_BEFORE = datetime.timedelta(days=30)
CHECK_INTERVAL = 30.0


class CertificateError(ImagegateError):
    """The serving certificate cannot be made, stored or read."""


@dataclass(frozen=True)
class SelfManagedTLS:
    api: client.ApiClient
    namespace: str
    secret_name: str
    service_name: str
    #: Name of both the Mutating and the ValidatingWebhookConfiguration.
    webhook_configuration: str
    directory: Path
    clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)

    @property
    def dns_names(self) -> list[str]:
        service, namespace = self.service_name, self.namespace
        return [
            service,
            f"{service}.{namespace}",
            f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local",
        ]

    @property
    def files(self) -> server.TLSFiles:
        return server.TLSFiles(self.directory / CERT_KEY, self.directory / KEY_KEY)

    def ensure(self) -> bytes:
        """Make sure the Secret holds a usable certificate and the files match it; the CA PEM."""
        core = client.CoreV1Api(self.api)
        data, version = self._read(core)
        if data is None or not self._usable(data):
            data = self._replace(core, version)
        self._write_files(data)
        return data[CA_KEY]

    def patch_ca_bundles(self, ca_pem: bytes) -> None:
        """Put the CA into every webhook of both configurations, where it is not there yet."""
        bundle = base64.b64encode(ca_pem).decode()
        api = client.AdmissionregistrationV1Api(self.api)
        for kind, read, patch in (
            (
                "MutatingWebhookConfiguration",
                api.read_mutating_webhook_configuration,
                api.patch_mutating_webhook_configuration,
            ),
            (
                "ValidatingWebhookConfiguration",
                api.read_validating_webhook_configuration,
                api.patch_validating_webhook_configuration,
            ),
        ):
            try:
                found = read(self.webhook_configuration)
            except client.ApiException as error:
                logger.warning(
                    "cannot read %s %s to set its caBundle: %s (%s)",
                    kind,
                    self.webhook_configuration,
                    error.reason,
                    error.status,
                )
                continue
            webhooks: list[Any] = list(found.webhooks or [])
            operations = [
                {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": bundle}
                for index, webhook in enumerate(webhooks)
                if webhook.client_config.ca_bundle != bundle
            ]
            if operations:
                patch(self.webhook_configuration, operations)
                logger.info("caBundle set on %s %s", kind, self.webhook_configuration)

    async def run(self, interval: float = CHECK_INTERVAL) -> None:
        """Follow rotations (by this replica or another) and re-patch a reset caBundle."""
        while True:
            await asyncio.sleep(interval)
            try:
                ca_pem = await asyncio.to_thread(self.ensure)
                await asyncio.to_thread(self.patch_ca_bundles, ca_pem)
            except (client.ApiException, ImagegateError) as error:
                logger.warning("serving certificate check failed: %s", error)
            except (urllib3.exceptions.HTTPError, OSError) as error:
                # An API server outage: the files on disk still serve; check again next time.
                logger.warning(
                    "serving certificate check failed, the API server is unreachable: %r", error
                )

    # -- internals ------------------------------------------------------------------------------

    def _read(self, core: client.CoreV1Api) -> tuple[dict[str, bytes] | None, str | None]:
        """The Secret's data and resourceVersion, or (None, None) when there is none yet."""
        try:
            secret = core.read_namespaced_secret(self.secret_name, self.namespace)
        except client.ApiException as error:
            if error.status == 404:
                return None, None
            raise CertificateError(
                f"cannot read Secret {self.namespace}/{self.secret_name}: {error.reason}"
            ) from error
        data = {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}
        return data, (secret.metadata.resource_version if secret.metadata else None)

    def _usable(self, data: dict[str, bytes]) -> bool:
        if not all(key in data for key in (CA_KEY, CERT_KEY, KEY_KEY)):
            return False
        try:
            certificate = x509.load_pem_x509_certificate(data[CERT_KEY])
            names = certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.DNSName)
        except (ValueError, x509.ExtensionNotFound):
            return False
        fresh = certificate.not_valid_after_utc - RENEW_BEFORE > self.clock()
        return fresh and set(self.dns_names) <= set(names)

    def _replace(self, core: client.CoreV1Api, version: str | None) -> dict[str, bytes]:
        """Store a new CA and certificate; on a lost race, the winner's."""
        authority = tls.CertificateAuthority.create(f"imagegate-ca.{self.namespace}")
        pair = authority.issue(self.dns_names[2], dns_names=self.dns_names)
        data = {
            CA_KEY: authority.cert_pem,
            CA_KEY_KEY: authority.key_pem,
            CERT_KEY: pair.cert_pem,
            KEY_KEY: pair.key_pem,
        }
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=self.secret_name,
                labels=dict(audit.MANAGED_BY),
                # Replace only what we read: two replicas renewing at once cannot both win.
                resource_version=version,
            ),
            type="kubernetes.io/tls",
            data={key: base64.b64encode(value).decode() for key, value in data.items()},
        )
        try:
            if version is not None:
                core.replace_namespaced_secret(self.secret_name, self.namespace, body)
            else:
                core.create_namespaced_secret(self.namespace, body)
        except client.ApiException as error:
            if error.status in (409, 422):
                # Another replica won the race: use what it stored.
                stored, _ = self._read(core)
                if stored is not None and self._usable(stored):
                    return stored
            raise CertificateError(
                f"cannot store Secret {self.namespace}/{self.secret_name}: {error.reason}"
            ) from error
        logger.info(
            "serving certificate for %s stored in Secret %s/%s",
            self.dns_names[2],
            self.namespace,
            self.secret_name,
        )
        return data

    def _write_files(self, data: dict[str, bytes]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for key in (KEY_KEY, CERT_KEY, CA_KEY):  # key before cert: the reload reads both
            path = self.directory / key
            if path.exists() and path.read_bytes() == data[key]:
                continue
            staged = path.with_suffix(".new")
            staged.write_bytes(data[key])
            os.chmod(staged, 0o600)
            staged.replace(path)
