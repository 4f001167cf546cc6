"""What the registry client raises; client.py re-exports these as part of its interface.

A module of their own so that registry/auth.py can raise them without importing the client.
"""

from __future__ import annotations

from imagegate.errors import ImagegateError


class RegistryError(ImagegateError):
    """A registry could not give an answer imagegate can trust."""


class ManifestUnknown(RegistryError):
    """The registry says the image or tag does not exist (404)."""


class Unauthorized(RegistryError):
    """The registry refused the credentials imagegate has (or has none)."""


class RateLimited(RegistryError):
    """The registry kept answering 429 until the retries or the deadline ran out."""


class RegistryUnavailable(RegistryError):
    """5xx answers, timeouts or network errors until the retries or the deadline ran out."""


class DigestMismatch(RegistryError):
    """The registry sent bytes that do not hash to the digest it was asked for or claimed."""
