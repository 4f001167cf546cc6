"""imagegate's errors: one small hierarchy, each error with a user message and a log context.

The user message is what an admin reads (in an admission response, or as the one line a command
prints before it exits); the context is what goes to the structured log. Keeping them apart means
no secret or internal detail leaks into an API response by accident.
"""

from __future__ import annotations

from collections.abc import Mapping


class ImagegateError(Exception):
    """Base of every error imagegate raises on purpose."""

    def __init__(self, message: str, *, context: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.user_message = message
        self.context: dict[str, object] = dict(context or {})


class UsageError(ImagegateError):
    """A command was called with arguments or input it cannot use (exit status 2)."""


class TestbedError(ImagegateError):
    """The local test bed could not be built, started or reached."""

    __test__ = False  # not a pytest test class, despite the name


class BuildError(TestbedError):
    """A test-bed tool could not be built from its Go module."""


class StartError(TestbedError):
    """A test-bed process did not start or did not become healthy."""
