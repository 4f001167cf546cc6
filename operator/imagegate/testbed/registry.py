"""The local OCI registry: go-containerregistry's in-memory registry with referrers turned on."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from imagegate.testbed import processes

START_TIMEOUT = 30.0
_LISTENING = re.compile(r"^listening on (127\.0\.0\.1:\d+)$", re.MULTILINE)


class LocalRegistry:
    """Plain HTTP on 127.0.0.1 (registries on loopback are insecure-by-default for cosign/crane)."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        *,
        detached: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        """`extra_args`: e.g. `-referrers-filter=false`, to act like registries that ignore it,
        or `-basic-auth user:password`, to act like a private registry."""
        self.binary = binary
        self.extra_args = tuple(extra_args)
        self.workdir = workdir
        self.detached = detached
        self.process: processes.ManagedProcess | None = None
        self.address = ""

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> None:
        log_path = self.workdir / "logs" / f"registry-{id(self)}.log"
        process = processes.ManagedProcess(
            "registry",
            [str(self.binary), "-addr", "127.0.0.1:0", *self.extra_args],
            log_path,
            detached=self.detached,
        )
        process.start()
        try:
            process.wait_until(
                lambda: self._bound(log_path), timeout=START_TIMEOUT, what="listening"
            )
            process.wait_until(self._serving, timeout=START_TIMEOUT, what="serving /v2/")
        except BaseException:
            process.stop()
            raise
        self.process = process

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def _bound(self, log_path: Path) -> bool:
        match = _LISTENING.search(log_path.read_text(errors="replace"))
        if match is None:
            return False
        self.address = match[1]
        return True

    def _serving(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/v2/", timeout=2) as reply:
                return int(reply.status) == 200
        except urllib.error.HTTPError as error:
            return error.code == 401  # started with -basic-auth: serving, and asking who we are
