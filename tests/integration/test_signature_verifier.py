"""CosignVerifier on the real registry, with images signed by the real cosign CLI."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from imagegate.policy import engine, model
from imagegate.registry import client as oci
from imagegate.signatures.verifier import CosignVerifier
from imagegate.testbed.registry import LocalRegistry
from support import cosign_env, cosign_key_pair, cosign_sign, push_random_image


@pytest.fixture(scope="module")
def keys_dir(cosign: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    for name in ("signer", "stranger"):
        cosign_key_pair(cosign, directory, name)
    return directory


sign = cosign_sign

#: Pushes a fresh image to `repository` (tag v1) and, unless `bundle` is None, signs it with
#: the signer key (a v0.3 bundle or a legacy .sig); gives (registry/repository, digest).
Publish = Callable[..., tuple[str, str]]


@pytest.fixture
def publish(
    registry: LocalRegistry, crane: Path, cosign: Path, keys_dir: Path, tmp_path: Path
) -> Publish:
    def push(repository: str, *, bundle: bool | None, tag: str = "v1") -> tuple[str, str]:
        digest = push_random_image(crane, registry.address, repository, tag, tmp_path)
        name = f"{registry.address}/{repository}"
        if bundle is not None:
            sign(cosign, keys_dir / "signer.key", f"{name}@{digest}", bundle=bundle)
        return name, digest

    return push


def requirement(keys_dir: Path, *names: str, tlog: bool = False) -> model.Signatures:
    return model.Signatures.model_validate(
        {
            "keys": [{"publicKey": (keys_dir / f"{n}.pub").read_text()} for n in names],
            "requireTransparencyLog": tlog,
        }
    )


@pytest.fixture
async def verifier(registry: LocalRegistry) -> AsyncIterator[CosignVerifier]:
    async with aiohttp.ClientSession() as session:
        yield CosignVerifier(oci.RegistryClient(session, insecure=frozenset({registry.address})))


async def verdict(verifier: CosignVerifier, image: str, needs: Any) -> engine.SignatureVerdict:
    check = engine.SignatureCheck(image, "p", "s", needs)
    return (await verifier.verify([check], deadline=time.monotonic() + 30))[check]


@pytest.mark.parametrize("bundle", [False, True], ids=["legacy-sig", "bundle-v0.3"])
async def test_a_key_signed_image_verifies_and_reports_its_digest(
    verifier: CosignVerifier, publish: Publish, keys_dir: Path, bundle: bool
) -> None:
    name, digest = publish(f"sig/ok-{int(bundle)}", bundle=bundle)
    result = await verdict(verifier, f"{name}:v1", requirement(keys_dir, "stranger", "signer"))
    assert result == engine.SignatureVerdict(True, digest=digest)


async def test_the_wrong_key_names_each_authority_tried(
    verifier: CosignVerifier, publish: Publish, keys_dir: Path
) -> None:
    name, digest = publish("sig/wrong", bundle=True)
    result = await verdict(verifier, f"{name}@{digest}", requirement(keys_dir, "stranger"))
    assert not result.verified
    assert result.reason == f"{digest}: keys[0]: signature does not verify with the key"


async def test_unsigned_images_are_refused_under_key_and_keyless_requirements(
    verifier: CosignVerifier, publish: Publish, keys_dir: Path, registry: LocalRegistry
) -> None:
    _, digest = publish("sig/none", bundle=None)
    result = await verdict(
        verifier, f"{registry.address}/sig/none:v1", requirement(keys_dir, "signer")
    )
    assert result.reason == f"{digest}: keys[0]: no signature found"
    keyless = model.Signatures.model_validate(
        {"keyless": [{"issuer": "https://i", "subject": "https://s"}]}
    )
    result = await verdict(verifier, f"{registry.address}/sig/none:v1", keyless)
    assert result.reason == f"{digest}: keyless[0]: no signature found"
    # A key-signed image under a keyless requirement: the bundle has no certificate.


async def test_a_signature_copied_onto_another_image_is_refused(
    verifier: CosignVerifier,
    registry: LocalRegistry,
    crane: Path,
    cosign: Path,
    keys_dir: Path,
    tmp_path: Path,
) -> None:
    signed = push_random_image(crane, registry.address, "sig/copy", "a", tmp_path)
    other = push_random_image(crane, registry.address, "sig/copy", "b", tmp_path)
    sign(cosign, keys_dir / "signer.key", f"{registry.address}/sig/copy@{signed}", bundle=False)
    # Re-tag the valid signature of `signed` as if it belonged to `other`.
    subprocess.run(
        [
            str(crane),
            "copy",
            f"{registry.address}/sig/copy:{signed.replace(':', '-')}.sig",
            f"{registry.address}/sig/copy:{other.replace(':', '-')}.sig",
        ],
        check=True,
        capture_output=True,
    )
    result = await verdict(
        verifier, f"{registry.address}/sig/copy@{other}", requirement(keys_dir, "signer")
    )
    assert not result.verified
    assert result.reason.endswith("(digest mismatch)")


async def test_key_signatures_without_a_log_fail_when_the_log_is_required(
    verifier: CosignVerifier, publish: Publish, keys_dir: Path
) -> None:
    name, digest = publish("sig/tlog", bundle=True)
    result = await verdict(verifier, f"{name}@{digest}", requirement(keys_dir, "signer", tlog=True))
    assert "not in a transparency log" in result.reason


async def test_a_registry_that_is_down_is_a_refusal_with_the_reason(
    verifier: CosignVerifier,
    keys_dir: Path,
) -> None:
    from imagegate.testbed import processes

    dead = f"127.0.0.1:{processes.free_port()}"
    async with aiohttp.ClientSession() as session:
        local = CosignVerifier(oci.RegistryClient(session, insecure=frozenset({dead}), retries=0))
        result = await verdict(local, f"{dead}/x/y:v1", requirement(keys_dir, "signer"))
    assert not result.verified
    assert result.reason.startswith(f"registry error: {dead} did not answer")


async def test_a_key_signature_does_not_satisfy_a_keyless_identity(
    verifier: CosignVerifier, publish: Publish
) -> None:
    name, digest = publish("sig/keyless", bundle=True)
    keyless = model.Signatures.model_validate(
        {"keyless": [{"issuer": "https://i", "subject": "https://s"}]}
    )
    result = await verdict(verifier, f"{name}@{digest}", keyless)
    assert not result.verified
    assert result.reason == (
        f"{digest}: keyless[0]: the bundle was signed with a key, not a Fulcio certificate"
    )


class Secrets:
    """Stands in for the API server's Secrets (the e2e tier reads real ones)."""

    def __init__(self, values: dict[tuple[str, str, str], bytes]) -> None:
        self.values = values
        self.read_from: list[str] = []

    async def read(self, namespace: str, name: str, key: str) -> bytes:
        from imagegate.signatures.material import MaterialError

        self.read_from.append(namespace)
        if (namespace, name, key) not in self.values:
            raise MaterialError(f"cannot read Secret {namespace}/{name}: Not Found (404)")
        return self.values[(namespace, name, key)]

    async def read_config_map(self, namespace: str, name: str, key: str) -> str:
        return (await self.read(namespace, name, key)).decode()


async def test_keys_from_secrets_and_the_namespace_an_image_policy_may_read(
    registry: LocalRegistry, publish: Publish, keys_dir: Path
) -> None:
    name, digest = publish("sig/secret", bundle=True)
    pem = (keys_dir / "signer.pub").read_bytes()
    secrets = Secrets(
        {("team-a", "cosign", "cosign.pub"): pem, ("ops", "cosign", "cosign.pub"): pem}
    )
    needs = model.Signatures.model_validate(
        {
            "keys": [{"secretRef": {"name": "cosign", "namespace": "ops"}}],
            "requireTransparencyLog": False,
        }
    )
    image = f"{name}@{digest}"
    async with aiohttp.ClientSession() as session:
        client = oci.RegistryClient(session, insecure=frozenset({registry.address}))
        verifier = CosignVerifier(client, secrets=secrets, own_namespace="imagegate-system")
        cluster_check = engine.SignatureCheck(image, "p", "s", needs, None)
        assert (await verifier.verify([cluster_check], time.monotonic() + 30))[
            cluster_check
        ].verified
        # An ImagePolicy in team-b names namespace ops: it is read from team-b, and not found.
        local_check = engine.SignatureCheck(image, "team-b/p", "s", needs, "team-b")
        result = (await verifier.verify([local_check], time.monotonic() + 30))[local_check]
    assert secrets.read_from == ["ops", "team-b"]
    assert not result.verified
    assert result.reason == "keys: cannot read Secret team-b/cosign: Not Found (404)"


def test_secret_namespaces_follow_the_policy_kind() -> None:
    from imagegate.signatures.material import secret_namespace

    assert secret_namespace("team-a", "ops", "imagegate-system") == "team-a"
    assert secret_namespace(None, "ops", "imagegate-system") == "ops"
    assert secret_namespace(None, None, "imagegate-system") == "imagegate-system"


def _test_fulcio(directory: Path, subject: str, issuer: str) -> tuple[Path, Path, Path, str]:
    """A private CA and a Fulcio-style leaf: (leaf key PEM, leaf cert, CA cert, trusted_root)."""
    import base64
    import datetime
    import json

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

    from imagegate.cluster import tls

    ca = tls.CertificateAuthority.create("imagegate-test-fulcio")
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    leaf_key = tls.new_private_key()
    now = datetime.datetime.now(datetime.UTC)
    issuer_der = b"\x0c" + bytes([len(issuer)]) + issuer.encode()
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.certificate.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(subject)]), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        # Fulcio's profile, which the chain check holds leaves to: digital signatures only, and
        # the key identifiers RFC 5280 path validation asks of a leaf.
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.certificate.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.57264.1.8"), issuer_der),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    (directory / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (directory / "leaf-key.pem").write_bytes(tls.private_key_pem(leaf_key))
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    root = {
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [],
        "certificateAuthorities": [
            {
                "subject": {
                    "organization": "imagegate tests",
                    "commonName": "imagegate-test-fulcio",
                },
                "uri": "https://fulcio.test.invalid",
                "certChain": {
                    "certificates": [
                        {
                            "rawBytes": base64.b64encode(
                                ca.certificate.public_bytes(serialization.Encoding.DER)
                            ).decode()
                        }
                    ]
                },
                "validFor": {"start": "2020-01-01T00:00:00Z"},
            }
        ],
        "ctlogs": [],
        "timestampAuthorities": [],
    }
    return (
        directory / "leaf-key.pem",
        directory / "leaf.pem",
        directory / "ca.pem",
        json.dumps(root),
    )


async def test_a_private_ca_certificate_verifies_through_a_custom_trust_root(
    registry: LocalRegistry,
    crane: Path,
    cosign: Path,
    tmp_path: Path,
) -> None:
    subject, issuer = "release@example.test", "https://issuer.example.test"
    leaf_key, leaf_cert, ca_cert, root = _test_fulcio(tmp_path, subject, issuer)
    subprocess.run(
        [str(cosign), "import-key-pair", "--key", str(leaf_key), "--output-key-prefix", "imported"],
        cwd=tmp_path,
        env=cosign_env(),
        check=True,
        capture_output=True,
    )
    digest = push_random_image(crane, registry.address, "sig/private-ca", "v1", tmp_path)
    cosign_sign(
        cosign,
        tmp_path / "imported.key",
        f"{registry.address}/sig/private-ca@{digest}",
        bundle=False,
        extra=("--certificate", str(leaf_cert), "--certificate-chain", str(ca_cert)),
    )
    material = Secrets({("imagegate-system", "private-root", "trusted_root.json"): root.encode()})

    def needs(who: str, tlog: bool = False) -> model.Signatures:
        return model.Signatures.model_validate(
            {
                "keyless": [{"issuer": issuer, "subject": who}],
                "trustRoot": {"configMapRef": {"name": "private-root"}},
                "requireTransparencyLog": tlog,
            }
        )

    image = f"{registry.address}/sig/private-ca@{digest}"
    async with aiohttp.ClientSession() as session:
        verifier = CosignVerifier(
            oci.RegistryClient(session, insecure=frozenset({registry.address})), secrets=material
        )

        async def run(requirement: model.Signatures) -> engine.SignatureVerdict:
            check = engine.SignatureCheck(image, "p", "s", requirement, None)
            return (await verifier.verify([check], time.monotonic() + 30))[check]

        assert await run(needs(subject)) == engine.SignatureVerdict(True, digest=digest)
        wrong = await run(needs("someone@example.test"))
        assert (
            "keyless[0]: wrong identity: certificate subject is release@example.test"
            in wrong.reason
        )
        # The same signature has no log entry: refused where the policy asks for one.
        logged = await run(needs(subject, tlog=True))
        assert "no transparency log entry" in logged.reason
        # And the public-good root does not trust the private CA.
        public = model.Signatures.model_validate(
            {
                "keyless": [{"issuer": issuer, "subject": subject}],
                "requireTransparencyLog": False,
            }
        )
        untrusted = await run(public)
        assert "untrusted CA" in untrusted.reason
