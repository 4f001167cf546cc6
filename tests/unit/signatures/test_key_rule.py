"""One rule for every key: the policy model (inline keys) and the verifier (keys from Secrets)
accept and refuse exactly the same keys, and every accepted key really verifies signatures."""

from __future__ import annotations

import functools
from typing import Any

import pydantic
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa

from imagegate.core import keys
from imagegate.policy import model
from imagegate.signatures import verifier


@functools.cache
def _private(kind: str) -> Any:
    return {
        "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
        "p521": lambda: ec.generate_private_key(ec.SECP521R1()),
        "rsa2048": lambda: rsa.generate_private_key(65537, 2048),
        "rsa4096": lambda: rsa.generate_private_key(65537, 4096),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
        "rsa1024": lambda: rsa.generate_private_key(65537, 1024),
        "rsa8192": lambda: rsa.generate_private_key(65537, 8192),
        "secp256k1": lambda: ec.generate_private_key(ec.SECP256K1()),
        "ed448": ed448.Ed448PrivateKey.generate,
        "dsa": lambda: dsa.generate_private_key(2048),
    }[kind]()


def _pem(kind: str) -> str:
    data: bytes = (
        _private(kind)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return data.decode()


ACCEPTED = ["p256", "p384", "p521", "rsa2048", "rsa4096", "ed25519"]
REFUSED = {
    "rsa1024": "1024-bit RSA key",
    "rsa8192": "8192-bit RSA key",
    "secp256k1": "ECDSA key on secp256k1",
    "ed448": "Ed448PublicKey, not a signing key",
    "dsa": "DSAPublicKey, not a signing key",
}


class _Secrets:
    """A Secret reader holding one PEM (the verifier's SecretReader protocol)."""

    def __init__(self, pem: str) -> None:
        self.pem = pem

    async def read(self, namespace: str, name: str, key: str) -> bytes:
        return self.pem.encode()


def _inline(pem: str) -> model.Signatures:
    return model.Signatures.model_validate({"keys": [{"publicKey": pem}]})


async def _from_secret(pem: str) -> list[keys.PublicKey]:
    requirement = model.Signatures.model_validate({"keys": [{"secretRef": {"name": "k"}}]})
    cosign = verifier.CosignVerifier(
        None,  # type: ignore[arg-type]  # no registry: only key loading is exercised
        None,  # type: ignore[arg-type]
        secrets=_Secrets(pem),
        own_namespace="imagegate-system",
    )
    return await cosign._public_keys(requirement, "team")


def _sign(kind: str, data: bytes) -> bytes:
    key = _private(kind)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    signature: bytes = key.sign(data)
    return signature


@pytest.mark.parametrize("kind", ACCEPTED)
async def test_an_accepted_key_is_accepted_inline_and_from_a_secret_and_verifies(
    kind: str,
) -> None:
    pem = _pem(kind)
    assert _inline(pem).keys[0].public_key == pem
    (loaded,) = await _from_secret(pem)
    payload = b'{"critical":{"image":{"docker-manifest-digest":"sha256:ab"}}}'
    assert loaded.verify(_sign(kind, payload), payload)
    assert not loaded.verify(_sign(kind, payload), payload + b" ")


@pytest.mark.parametrize(("kind", "reason"), sorted(REFUSED.items()))
async def test_a_refused_key_is_refused_inline_and_from_a_secret_alike(
    kind: str, reason: str
) -> None:
    pem = _pem(kind)
    with pytest.raises(pydantic.ValidationError, match=reason):
        _inline(pem)
    with pytest.raises(keys.UnusableKeyError, match=reason):
        await _from_secret(pem)


def test_the_crd_describes_the_rule_the_verifier_applies() -> None:
    description = model.KeyAuthority.__doc__ or ""
    assert keys.ACCEPTED_KEYS in " ".join(description.split())
