"""cosign public keys: ECDSA (P-256, P-384, P-521) and RSA, verified as cosign signs."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from imagegate.errors import ImagegateError

_CURVE_HASH: dict[str, hashes.HashAlgorithm] = {
    "secp256r1": hashes.SHA256(),
    "secp384r1": hashes.SHA384(),
    "secp521r1": hashes.SHA512(),
}


class KeyError_(ImagegateError):
    """A public key imagegate cannot use."""


@dataclass(frozen=True, eq=False)
class PublicKey:
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey

    @functools.cached_property
    def der(self) -> bytes:
        """SubjectPublicKeyInfo DER: the key's identity (computed once; it keys caches)."""
        return self.key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether `signature` over `data` was made with this key's private half."""
        try:
            if isinstance(self.key, ec.EllipticCurvePublicKey):
                # cosign hashes with SHA-256 whatever the curve; sigstore-go picks by curve.
                # Both are sound for the key; accept either.
                by_curve = _CURVE_HASH.get(self.key.curve.name, hashes.SHA256())
                algorithms = [hashes.SHA256()] + ([by_curve] if by_curve.name != "sha256" else [])
                for algorithm in algorithms:
                    try:
                        self.key.verify(signature, data, ec.ECDSA(algorithm))
                        return True
                    except InvalidSignature:
                        continue
                return False
            self.key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            return True
        except (InvalidSignature, ValueError):
            return False


def load_public_key(pem: str | bytes) -> PublicKey:
    """Parse a PEM public key (memoised: policies name the same few keys on every admission)."""
    return _load(pem.encode() if isinstance(pem, str) else pem)


@functools.lru_cache(maxsize=256)
def _load(data: bytes) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as error:
        raise KeyError_("not a PEM public key") from error
    if isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return PublicKey(key)
    raise KeyError_(f"unsupported key type {type(key).__name__} (ECDSA or RSA expected)")
