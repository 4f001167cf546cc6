"""Build the test bed's tools from their Go modules, once per machine, into a versioned cache.

Nothing here downloads a prebuilt binary: every tool is compiled with the local Go toolchain from
modules fetched through the Go module proxy. kube-apiserver, kubectl and etcd cannot be built with
`go install pkg@version` because their go.mod files carry `replace` directives, so each gets a small
generated wrapper module (see ../shared/notes/testbed-build.md for why each step is there). Here:
the builder (cache, lock, Go toolchain, logs) and the tools; how each is built: recipes.py.

Cache layout (root: $IMAGEGATE_CACHE, else $XDG_CACHE_HOME/imagegate, else ~/.cache/imagegate):

    bin/<tool>/<version>/<tool>          the binary
    bin/<tool>/<version>/<tool>.stamp    what built it; a mismatch means stale, so it is rebuilt
    work/<wrapper>/                      generated wrapper modules
    logs/build-<tool>-<version>.log      full output of the last build of that tool
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from imagegate.errors import BuildError
from imagegate.testbed import recipes, versions

#: Bump when a recipe changes in a way that must rebuild binaries already in a cache.
RECIPE_REVISION = 1

LOG_TAIL_LINES = 30


def cache_root() -> Path:
    if explicit := os.environ.get("IMAGEGATE_CACHE"):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "imagegate"


@dataclass(frozen=True)
class Tool:
    """A binary the test bed needs, and how to build and recognise it."""

    name: str
    version: str
    build: Callable[[Builder, Tool, Path], None]
    #: Arguments that make the binary print its version; the output must contain `version`.
    version_args: tuple[str, ...]
    #: Extra input to the cache key (e.g. a hash of our own Go source).
    fingerprint: str = ""
    #: Environment overrides for the version check (e.g. no cluster to connect to).
    version_env: tuple[tuple[str, str], ...] = ()

    def stamp(self) -> str:
        return json.dumps(
            {
                "tool": self.name,
                "version": self.version,
                "recipe": RECIPE_REVISION,
                "fingerprint": self.fingerprint,
            },
            sort_keys=True,
        )


class Builder:
    """Runs the Go toolchain with a build log per tool and one clear error line on failure."""

    def __init__(self, root: Path | None = None, *, log: Callable[[str], None] | None = None):
        self.root = root or cache_root()
        self._say = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._log_path: Path | None = None

    # -- public ---------------------------------------------------------------------------------

    def binary_path(self, tool: Tool) -> Path:
        return self.root / "bin" / tool.name / tool.version / tool.name

    def is_current(self, tool: Tool) -> bool:
        """True when the cached binary was built by this recipe and still runs."""
        binary = self.binary_path(tool)
        stamp = binary.with_name(tool.name + ".stamp")
        if not binary.is_file() or not stamp.is_file():
            return False
        if stamp.read_text() != tool.stamp():
            return False
        return self._reports_version(tool, binary)

    def ensure(self, tool: Tool) -> Path:
        """Return the path of `tool`, building it first when the cache lacks it or it is stale."""
        binary = self.binary_path(tool)
        if self.is_current(tool):
            return binary
        with self._lock():
            if self.is_current(tool):  # another process built it while we waited
                return binary
            if binary.exists():
                self._say(f"imagegate testbed: cached {tool.name} {tool.version} is stale")
            self.require_go()
            self.check_go_version()
            self._build(tool, binary)
        return binary

    def ensure_all(self, tools: Sequence[Tool]) -> dict[str, Path]:
        return {tool.name: self.ensure(tool) for tool in tools}

    # -- the Go toolchain -----------------------------------------------------------------------

    def go(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
        """Run `go ARGS` in `cwd`, appending its output to the current build log."""
        go = self.require_go()
        full_env = {
            **os.environ,
            "CGO_ENABLED": "0",
            # Never let `go` fetch a different toolchain: fail clearly instead.
            "GOTOOLCHAIN": "local",
            "GOFLAGS": "-mod=mod -buildvcs=false",
            **(env or {}),
        }
        completed = subprocess.run(
            [go, *args],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        self._append_log(f"$ go {' '.join(args)}   (in {cwd})\n{completed.stdout}")
        if completed.returncode != 0:
            raise BuildError(
                f"`go {args[0]}` failed while building the test bed",
                context={"args": list(args), "cwd": str(cwd), "output": completed.stdout},
            )
        return completed.stdout

    def require_go(self) -> str:
        go = shutil.which("go")
        if go is None:
            raise BuildError(
                "no Go toolchain on PATH: install Go >= "
                f"{versions.MINIMUM_GO[0]}.{versions.MINIMUM_GO[1]} (or set KUBEBUILDER_ASSETS to "
                "existing envtest binaries) and run the command again"
            )
        return go

    def check_go_version(self) -> None:
        version = self.go("env", "GOVERSION", cwd=Path.cwd()).strip()
        match = re.match(r"go(\d+)\.(\d+)", version)
        if match is None:
            return  # a development toolchain: let the build itself decide
        found = (int(match[1]), int(match[2]))
        if found < versions.MINIMUM_GO:
            raise BuildError(
                f"Go {found[0]}.{found[1]} is too old for the test bed: install Go >= "
                f"{versions.MINIMUM_GO[0]}.{versions.MINIMUM_GO[1]}"
            )

    def work_dir(self, name: str) -> Path:
        path = self.root / "work" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- internals ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "build.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _build(self, tool: Tool, binary: Path) -> None:
        log_path = self.root / "logs" / f"build-{tool.name}-{tool.version}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
        self._log_path = log_path
        self._say(f"imagegate testbed: building {tool.name} {tool.version} (log: {log_path})")
        started = time.monotonic()
        staging = binary.with_name(tool.name + ".partial")
        staging.parent.mkdir(parents=True, exist_ok=True)
        try:
            tool.build(self, tool, staging)
            if not self._reports_version(tool, staging):
                raise BuildError(
                    f"built {tool.name} but `{tool.name} {' '.join(tool.version_args)}` "
                    f"does not report {tool.version}"
                )
        except BuildError as error:
            staging.unlink(missing_ok=True)
            raise BuildError(
                f"building {tool.name} {tool.version} failed: {error.user_message}; "
                f"see {log_path}\n{_tail(log_path)}",
                context=error.context,
            ) from error
        finally:
            self._log_path = None
        staging.replace(binary)
        binary.with_name(tool.name + ".stamp").write_text(tool.stamp())
        self._say(f"imagegate testbed: built {tool.name} in {time.monotonic() - started:.0f}s")

    def _append_log(self, text: str) -> None:
        if self._log_path is not None:
            with self._log_path.open("a") as handle:
                handle.write(text)

    def _reports_version(self, tool: Tool, binary: Path) -> bool:
        if not os.access(binary, os.X_OK):
            return False
        try:
            completed = subprocess.run(
                [str(binary), *tool.version_args],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                env={**os.environ, **dict(tool.version_env)},
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return tool.version.lstrip("v") in completed.stdout + completed.stderr


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("  | " + line for line in content[-lines:])


# -- the tools (how each is built: recipes.py) -------------------------------------------------

KUBE_APISERVER = Tool(
    "kube-apiserver",
    versions.KUBERNETES,
    recipes.build_kubernetes_command("kube-apiserver"),
    ("--version",),
)
KUBECTL = Tool(
    "kubectl",
    versions.KUBERNETES,
    recipes.build_kubernetes_command("kubectl"),
    ("version", "--client"),
)
ETCD = Tool("etcd", versions.ETCD, recipes.build_etcd, ("--version",))
HELM = Tool(
    "helm",
    versions.HELM,
    recipes.go_install("helm.sh/helm/v3/cmd/helm", *recipes.helm_stamp()),
    ("version", "--short"),
)
COSIGN = Tool(
    "cosign",
    versions.COSIGN,
    recipes.go_install(
        "github.com/sigstore/cosign/v3/cmd/cosign",
        ("sigs.k8s.io/release-utils/version.gitVersion", versions.COSIGN),
        ("sigs.k8s.io/release-utils/version.gitTreeState", "clean"),
    ),
    ("version",),
)
CRANE = Tool(
    "crane",
    versions.GO_CONTAINERREGISTRY,
    recipes.go_install(
        "github.com/google/go-containerregistry/cmd/crane",
        (
            "github.com/google/go-containerregistry/cmd/crane/cmd.Version",
            versions.GO_CONTAINERREGISTRY,
        ),
    ),
    ("version",),
)
REGISTRY = Tool(
    "imagegate-registry",
    versions.GO_CONTAINERREGISTRY,
    recipes.build_registry,
    ("-version",),
    fingerprint=recipes.registry_fingerprint(),
)

#: The peer for `bench/peer.py`, built on demand only: not part of the test bed (nor of CI).
POLICY_CONTROLLER = Tool(
    "policy-controller-webhook",
    versions.POLICY_CONTROLLER,
    recipes.build_policy_controller,
    # It prints its version (JSON) before connecting; with no cluster to reach it then exits.
    ("--disable-tuf",),
    version_env=(("KUBECONFIG", "/nonexistent"),),
)

#: The load generator for `bench/run`, built on demand only: not part of the test bed (nor of CI).
VEGETA = Tool(
    "vegeta",
    versions.VEGETA,
    recipes.go_install(
        "github.com/tsenart/vegeta/v12",
        ("main.Version", versions.VEGETA),
    ),
    ("-version",),
)

#: Build order: cheapest first, so a broken toolchain shows up in seconds, not after kube-apiserver.
ALL_TOOLS: tuple[Tool, ...] = (REGISTRY, CRANE, ETCD, HELM, COSIGN, KUBE_APISERVER, KUBECTL)
CONTROL_PLANE_TOOLS: tuple[Tool, ...] = (ETCD, KUBE_APISERVER, KUBECTL)
