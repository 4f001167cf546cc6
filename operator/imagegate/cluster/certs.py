"""Serving certificates the operator makes itself, when cert-manager is not used.

One CA and one serving certificate for `<service>.<namespace>.svc`, made with `cryptography`
and kept in a Secret, so that every replica serves the same certificate and a restart does not
change the CA. The first replica to start creates the Secret; the others lose the race (409)
and read it. Each replica writes the files its HTTPS server loads (the server reloads them within
a second of a change) and patches the CA into the `caBundle` of both webhook configurations, which
the Helm chart owns. Renewal: a certificate within `RENEW_BEFORE` of its end is replaced.

Rotation overlaps, so no admission fails: a new CA is stored with the one it replaces as
`ca-previous.crt` (from the old Secret, else this replica's files, else the published caBundle),
and the caBundle holds both for `PREVIOUS_CA_GRACE`. A replica switches its serving files to a new
certificate only after it has published a bundle with the new CA and waited `BUNDLE_SETTLE` for
the API server to pick it up; replicas still serving the old certificate stay trusted through the
previous CA. Once the grace has passed, any replica drops the previous CA from Secret and bundle.
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
from imagegate.signatures import apiserver

logger = logging.getLogger(__name__)

CA_KEY, CERT_KEY, KEY_KEY, CA_KEY_KEY = "ca.crt", "tls.crt", "tls.key", "ca.key"
#: The CA a rotation replaced, still in the caBundle until `PREVIOUS_CA_GRACE` has passed.
PREVIOUS_CA_KEY = "ca-previous.crt"
#: When the CA was last replaced (ISO 8601, UTC), on the Secret.
ROTATED_AT = "imagegate.dev/ca-rotated-at"
RENEW_BEFORE = datetime.timedelta(days=30)
CHECK_INTERVAL = 30.0
#: Far above what every replica takes to follow a rotation (a check, the settle, a reload).
PREVIOUS_CA_GRACE = datetime.timedelta(hours=1)
#: Seconds between publishing a bundle with a new CA and serving a certificate it signed: the
#: API server reads webhook configurations through a watch, a moment behind the write.
BUNDLE_SETTLE = 2.0


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
    previous_ca_grace: datetime.timedelta = PREVIOUS_CA_GRACE
    bundle_settle: float = BUNDLE_SETTLE
    #: Called (on the event loop) after `run` wrote new serving files: the server reloads at once.
    on_files_changed: Callable[[], object] | None = None

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
        """Make sure the Secret holds a usable certificate and the files match it; the CA PEM.

        Writes the files at once: for start-up, before anything is served.
        """
        data = self.refresh()
        self._write_files(data)
        return data[CA_KEY]

    def refresh(self) -> dict[str, bytes]:
        """The Secret's data, made usable (renewed, remade) and past-grace previous CA dropped."""
        core = apiserver.ApiServer(self.api)
        data, version, annotations = self._read(core)
        if data is None or not self._usable(data):
            return self._replace(core, version, data)
        if PREVIOUS_CA_KEY in data and self._grace_over(annotations):
            return self._drop_previous(core, data, version, annotations)
        return data

    def bundle(self, data: dict[str, bytes] | None = None) -> bytes:
        """The caBundle to publish: the CA, and the previous one while it is kept."""
        if data is None:
            data = {key: (self.directory / key).read_bytes() for key in (CA_KEY,)}
            previous = self.directory / PREVIOUS_CA_KEY
            if previous.is_file():
                data[PREVIOUS_CA_KEY] = previous.read_bytes()
        pems = [data[CA_KEY]]
        if data.get(PREVIOUS_CA_KEY) and data[PREVIOUS_CA_KEY] != data[CA_KEY]:
            pems.append(data[PREVIOUS_CA_KEY])
        return b"".join(pem if pem.endswith(b"\n") else pem + b"\n" for pem in pems)

    def files_match(self, data: dict[str, bytes]) -> bool:
        """Whether the serving files already hold this Secret's certificate and key."""
        for key in (CERT_KEY, KEY_KEY):
            path = self.directory / key
            if not path.is_file() or path.read_bytes() != data[key]:
                return False
        return True

    def patch_ca_bundles(self, ca_pem: bytes) -> None:
        """Put the bundle (`ca_pem`: one or more PEM CAs) into every webhook of both
        configurations, where it is not there yet."""
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
                await self.check()
            except (client.ApiException, ImagegateError) as error:
                logger.warning("serving certificate check failed: %s", error)
            except (urllib3.exceptions.HTTPError, OSError) as error:
                # An API server outage: the files on disk still serve; check again next time.
                logger.warning(
                    "serving certificate check failed, the API server is unreachable: %r", error
                )

    async def check(self) -> None:
        """One look at the Secret: publish its bundle, then (after the settle) serve its files.

        The order is what keeps every handshake trusted: the bundle names the new CA before any
        replica serves a certificate it signed, and still names the old one while others do.
        """
        data = await asyncio.to_thread(self.refresh)
        await asyncio.to_thread(self.patch_ca_bundles, self.bundle(data))
        if self.files_match(data):
            await asyncio.to_thread(self._write_files, data)  # the CA files, when only they changed
            return
        await asyncio.sleep(self.bundle_settle)
        await asyncio.to_thread(self._write_files, data)
        logger.info("serving the certificate from Secret %s/%s", self.namespace, self.secret_name)
        if self.on_files_changed is not None:
            self.on_files_changed()

    # -- internals ------------------------------------------------------------------------------

    def _read(
        self, core: apiserver.ApiServer
    ) -> tuple[dict[str, bytes] | None, str | None, dict[str, str]]:
        """The Secret's data, resourceVersion and annotations; (None, None, {}) when none yet."""
        try:
            secret = core.get(self._secret_path())
        except client.ApiException as error:
            if error.status == 404:
                return None, None, {}
            raise CertificateError(
                f"cannot read Secret {self.namespace}/{self.secret_name}: {error.reason}"
            ) from error
        data = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
        metadata = secret.get("metadata") or {}
        return data, metadata.get("resourceVersion"), dict(metadata.get("annotations") or {})

    def _grace_over(self, annotations: dict[str, str]) -> bool:
        try:
            rotated = datetime.datetime.fromisoformat(annotations[ROTATED_AT])
        except (KeyError, ValueError):
            return True  # a previous CA with no date: nothing says it is still needed
        return self.clock() - rotated > self.previous_ca_grace

    def _previous_ca(self, old: dict[str, bytes] | None) -> bytes | None:
        """What the API server trusts now: the old Secret's CA, this replica's, or the bundle."""
        if old is not None and _is_certificate(old.get(CA_KEY, b"")):
            return old[CA_KEY]
        on_disk = self.directory / CA_KEY
        if on_disk.is_file() and _is_certificate(on_disk.read_bytes()):
            return on_disk.read_bytes()
        return self._published_bundle()

    def _published_bundle(self) -> bytes | None:
        api = client.AdmissionregistrationV1Api(self.api)
        try:
            found = api.read_validating_webhook_configuration(self.webhook_configuration)
        except (client.ApiException, urllib3.exceptions.HTTPError, OSError):
            return None
        for webhook in found.webhooks or []:
            if webhook.client_config.ca_bundle:
                published = base64.b64decode(webhook.client_config.ca_bundle)
                return published if _is_certificate(published) else None
        return None

    def _store(
        self,
        core: apiserver.ApiServer,
        data: dict[str, bytes],
        version: str | None,
        annotations: dict[str, str],
    ) -> None:
        metadata: dict[str, Any] = {"name": self.secret_name, "labels": dict(audit.MANAGED_BY)}
        if annotations:
            metadata["annotations"] = annotations
        if version is not None:
            # Replace only what we read: two replicas renewing at once cannot both win.
            metadata["resourceVersion"] = version
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": "kubernetes.io/tls",
            "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
        }
        if version is not None:
            core.replace(self._secret_path(), body)
        else:
            core.create(apiserver.core_path(self.namespace, "secrets"), body)

    def _secret_path(self) -> str:
        return apiserver.core_path(self.namespace, "secrets", self.secret_name)

    def _drop_previous(
        self,
        core: apiserver.ApiServer,
        data: dict[str, bytes],
        version: str | None,
        annotations: dict[str, str],
    ) -> dict[str, bytes]:
        kept = {key: value for key, value in data.items() if key != PREVIOUS_CA_KEY}
        try:
            self._store(core, kept, version, annotations)
        except client.ApiException as error:
            if error.status in (409, 422):
                return data  # another replica changed it: look again next time
            raise CertificateError(
                f"cannot store Secret {self.namespace}/{self.secret_name}: {error.reason}"
            ) from error
        logger.info("the previous CA's grace is over: dropped it from the caBundle")
        return kept

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

    def _replace(
        self, core: apiserver.ApiServer, version: str | None, old: dict[str, bytes] | None
    ) -> dict[str, bytes]:
        """Store a new CA and certificate, the old CA kept trusted; on a lost race, the winner's."""
        authority = tls.CertificateAuthority.create(f"imagegate-ca.{self.namespace}")
        pair = authority.issue(self.dns_names[2], dns_names=self.dns_names)
        data = {
            CA_KEY: authority.cert_pem,
            CA_KEY_KEY: authority.key_pem,
            CERT_KEY: pair.cert_pem,
            KEY_KEY: pair.key_pem,
        }
        previous = self._previous_ca(old)
        if previous is not None:
            data[PREVIOUS_CA_KEY] = previous
        annotations = {ROTATED_AT: self.clock().isoformat()}
        try:
            self._store(core, data, version, annotations)
        except client.ApiException as error:
            if error.status in (409, 422):
                # Another replica won the race: use what it stored.
                stored, _, _ = self._read(core)
                if stored is not None and self._usable(stored):
                    return stored
            raise CertificateError(
                f"cannot store Secret {self.namespace}/{self.secret_name}: {error.reason}"
            ) from error
        logger.info(
            "serving certificate for %s stored in Secret %s/%s (previous CA %s)",
            self.dns_names[2],
            self.namespace,
            self.secret_name,
            "kept in the caBundle" if previous is not None else "unknown",
        )
        return data

    def _write_files(self, data: dict[str, bytes]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Key before cert: the server reloads when either changed, and loads only a matching pair.
        for key in (KEY_KEY, CERT_KEY, CA_KEY, PREVIOUS_CA_KEY):
            path = self.directory / key
            if key not in data:
                path.unlink(missing_ok=True)
                continue
            if path.exists() and path.read_bytes() == data[key]:
                continue
            staged = path.with_suffix(".new")
            staged.write_bytes(data[key])
            os.chmod(staged, 0o600)
            staged.replace(path)


def _is_certificate(pem: bytes) -> bool:
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        return False
    return True
