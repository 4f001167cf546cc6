"""The whole test bed: control plane, registry and client tools, started and stopped as one.

Two ways to hold one:
- in-process (`with Testbed() as bed:`), as the pytest fixtures do: everything stops and the
  temporary directory goes when the block ends, also on failure or Ctrl-C, and the children are
  killed by the kernel if the test process itself is killed;
- detached (`imagegate testbed up` / `down`), for a developer's shell: the processes outlive the
  command, and a state file under the cache lets `down`, `env` and a second `up` find them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

import pydantic

from imagegate.errors import TestbedError
from imagegate.testbed import build, processes
from imagegate.testbed.controlplane import ControlPlane, ControlPlaneBinaries
from imagegate.testbed.registry import LocalRegistry

CLIENT_TOOLS = (build.KUBECTL, build.HELM, build.COSIGN, build.CRANE)


class TestbedState(pydantic.BaseModel):
    """What a detached test bed leaves behind for `down` and `env` (the state file)."""

    __test__ = False
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    workdir: str
    kubeconfig: str
    apiserver_url: str
    registry: str
    pids: list[int]
    path: list[str]

    def env(self) -> dict[str, str]:
        return {
            "KUBECONFIG": self.kubeconfig,
            "IMAGEGATE_TESTBED_REGISTRY": self.registry,
            "PATH": os.pathsep.join([*self.path, os.environ.get("PATH", "")]),
        }


def state_file() -> Path:
    """Where a detached bed is recorded ($IMAGEGATE_TESTBED_HOME, else under the cache)."""
    home = os.environ.get("IMAGEGATE_TESTBED_HOME")
    return (Path(home) if home else build.cache_root() / "testbed") / "state.json"


class Testbed:
    __test__ = False

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        detached: bool = False,
        control_plane: bool = True,
        registry: bool = True,
        builder: build.Builder | None = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="imagegate-testbed-"))
        self.detached = detached
        self.builder = builder or build.Builder()
        self.want_control_plane = control_plane
        self.want_registry = registry
        self.control_plane: ControlPlane | None = None
        self.registry: LocalRegistry | None = None
        self.tools: dict[str, Path] = {}

    def __enter__(self) -> Testbed:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, *, apiserver_port: int | None = None) -> None:
        try:
            self.tools = self.builder.ensure_all(CLIENT_TOOLS)
            if self.want_registry:
                self.registry = LocalRegistry(
                    self.builder.ensure(build.REGISTRY), self.workdir, detached=self.detached
                )
                self.registry.start()
            if self.want_control_plane:
                binaries = ControlPlaneBinaries.resolve(self.builder)
                if binaries.kubectl is not None:
                    self.tools["kubectl"] = binaries.kubectl
                self.control_plane = ControlPlane(
                    binaries, self.workdir / "controlplane", detached=self.detached
                )
                self.control_plane.start(apiserver_port=apiserver_port)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.control_plane is not None:
            self.control_plane.stop()
        if self.registry is not None:
            self.registry.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def state(self) -> TestbedState:
        pids = []
        if self.control_plane is not None:
            pids += self.control_plane.pids()
        if self.registry is not None and self.registry.process is not None:
            pids += [self.registry.process.pid] if self.registry.process.pid else []
        return TestbedState(
            workdir=str(self.workdir),
            kubeconfig=str(self.control_plane.kubeconfig) if self.control_plane else "",
            apiserver_url=self.control_plane.url if self.control_plane else "",
            registry=self.registry.address if self.registry else "",
            pids=pids,
            path=sorted({str(path.parent) for path in self.tools.values()}),
        )

    def env(self) -> dict[str, str]:
        return self.state().env()


# -- detached mode (imagegate testbed up | down | env) ------------------------------------------


def read_state() -> TestbedState | None:
    path = state_file()
    if not path.is_file():
        return None
    try:
        return TestbedState.model_validate_json(path.read_text())
    except pydantic.ValidationError as error:
        raise TestbedError(
            f"the test bed state file {path} is unreadable: run `imagegate testbed down --force`"
        ) from error


def running_state() -> TestbedState | None:
    """The detached bed's state when every one of its processes is still alive."""
    state = read_state()
    if state is None or not state.pids:
        return None
    if all(processes.alive(pid) for pid in state.pids):
        return state
    return None


def up(*, apiserver_port: int | None = None) -> tuple[TestbedState, bool]:
    """Start a detached bed, or return the one already running. The flag says if it is new."""
    if (state := running_state()) is not None:
        return state, False
    down()  # clear what a crashed or half-stopped bed left behind
    workdir = state_file().parent / "run"
    workdir.mkdir(parents=True, exist_ok=True)
    bed = Testbed(workdir, detached=True)
    bed.start(apiserver_port=apiserver_port)
    state = bed.state()
    state_file().write_text(state.model_dump_json(indent=2))
    return state, True


def down() -> bool:
    """Stop a detached bed and remove its files. Returns whether there was anything to stop."""
    path = state_file()
    try:
        state = read_state()
    except TestbedError:
        state = None
    for pid in state.pids if state else []:
        processes.stop_process_group(pid)
    if state is not None:
        shutil.rmtree(state.workdir, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        return True
    return state is not None
