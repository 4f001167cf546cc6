"""Registry credentials as the registry client takes them: pure, so the decision core can name
them without importing an HTTP client (docs/design.md §2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


class Keychain(Protocol):
    """Which credentials to send to `registry` for `repository` (None: anonymous)."""

    def credentials(self, registry: str, repository: str) -> Credentials | None: ...


class NoCredentials:
    def credentials(self, registry: str, repository: str) -> Credentials | None:
        return None
