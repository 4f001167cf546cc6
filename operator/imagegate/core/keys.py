"""cosign public keys: the one rule for which keys imagegate accepts, and verification with them.

The rule (`check_public_key`) is the one the policy model, the CRD's description and the verifier
all use, whether a key is written inline or read from a Secret: a policy is never Ready with a key
the verifier would refuse. It follows sigstore's own (`cryptoutils.ValidatePubKey`):

- ECDSA on P-256, P-384 or P-521 (not secp256k1 or other curves);
- RSA of 2048 to 4096 bits (smaller is weak; larger only costs each admission CPU);
- Ed25519, verified as cosign verifies it (the signature is over the message itself).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from imagegate.errors import ImagegateError

#: What the CRD's description and error messages say is accepted.
ACCEPTED_KEYS = "ECDSA P-256/P-384/P-521, RSA of 2048 to 4096 bits, or Ed25519"
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096

_CURVE_HASH: dict[str, hashes.HashAlgorithm] = {
    "secp256r1": hashes.SHA256(),
    "secp384r1": hashes.SHA384(),
    "secp521r1": hashes.SHA512(),
}

SigningKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class UnusableKeyError(ImagegateError):
    """A public key imagegate will not verify with; the message says why and what to use."""


def check_public_key(key: object) -> SigningKey:
    """`key` if the rule above accepts it, else `UnusableKeyError` saying what is wrong."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVE_HASH:
            raise UnusableKeyError(f"is an ECDSA key on {key.curve.name}; use {ACCEPTED_KEYS}")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise UnusableKeyError(f"is a {key.key_size}-bit RSA key; use {ACCEPTED_KEYS}")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise UnusableKeyError(f"is a {type(key).__name__}, not a signing key; use {ACCEPTED_KEYS}")


@dataclass(frozen=True, eq=False)
class PublicKey:
    key: SigningKey

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
            if isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(signature, data)  # PureEd25519, as cosign's ED25519Verifier
                return True
            self.key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            return True
        except (InvalidSignature, ValueError):
            return False


def load_public_key(pem: str | bytes) -> PublicKey:
    """Parse a PEM public key under the rule above (memoised: policies name the same few keys)."""
    return _load(pem.encode() if isinstance(pem, str) else pem)


@functools.lru_cache(maxsize=256)
def _load(data: bytes) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise UnusableKeyError(
            "is not a PEM public key (-----BEGIN PUBLIC KEY----- ... -----END PUBLIC KEY-----)"
        ) from error
    return PublicKey(check_public_key(key))
