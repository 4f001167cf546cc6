"""Child processes of the test bed: started with a log file, waited on, and always stopped.

Every failure to start becomes one `StartError` that names the component, says what went wrong
and carries the tail of its log, so a failing test shows why etcd or kube-apiserver died instead
of a bare timeout.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from imagegate.errors import StartError

LOG_TAIL_LINES = 25
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago. Callers retry if another process takes it first."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return "  | (no log written)"
    return "\n".join("  | " + line for line in content[-lines:]) or "  | (log is empty)"


def _die_with_parent() -> None:
    """Ask Linux to kill this child if the test process that started it is killed outright."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ManagedProcess:
    """One long-running child process with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        detached: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._env = dict(env) if env is not None else None
        self._detached = detached
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            try:
                self._popen = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env,
                    # Own process group: stop() signals the whole group, and a Ctrl-C aimed at
                    # the test runner does not kill the bed before teardown can stop it cleanly.
                    start_new_session=True,
                    preexec_fn=None if self._detached else _die_with_parent,
                )
            except OSError as error:
                raise StartError(f"{self.name} could not be executed: {error}") from error

    def exit_code(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def wait_until(
        self, ready: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1
    ) -> None:
        """Poll `ready` until it is true; fail early, with the log tail, if the process dies."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.exit_code()
            if code is not None:
                raise self.failure(f"exited with status {code} before it was {what}")
            with contextlib.suppress(OSError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise self.failure(f"was not {what} within {timeout:.0f}s")
            time.sleep(interval)

    def failure(self, reason: str) -> StartError:
        return StartError(
            f"{self.name} {reason} (log: {self.log_path})\n{tail(self.log_path)}",
            context={"component": self.name, "argv": self.argv},
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self._popen is None or self._popen.poll() is not None:
            return
        stop_process_group(self._popen.pid, timeout=timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=1)


def stop_process_group(pid: int, *, timeout: float = 10.0) -> None:
    """SIGTERM the group led by `pid`, then SIGKILL what is left after `timeout` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in the group.

    A detached bed's processes are re-parented to whatever reaps orphans here, which may never
    reap them: a zombie still answers `kill(pid, 0)`, so look at /proc instead.
    """
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)  # reap the leader when it is our own child
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            return True
    return False
