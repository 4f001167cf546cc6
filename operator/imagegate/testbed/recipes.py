"""How each test-bed tool is built: the recipes that build.py's `Tool`s name.

Most tools are a plain `go install pkg@version`. kube-apiserver, kubectl, etcd and
policy-controller cannot be: their go.mod files carry `replace` directives, so each gets a small
generated wrapper module (see ../shared/notes/testbed-build.md for why each step is there).
Changing what a recipe builds means bumping build.RECIPE_REVISION.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from imagegate.errors import BuildError
from imagegate.testbed import versions

if TYPE_CHECKING:
    from imagegate.testbed.build import Builder, Tool

POLICY_CONTROLLER_MODULE = "github.com/sigstore/policy-controller"


def _ldflags(*pairs: tuple[str, str]) -> str:
    return " ".join(["-s", "-w", *(f"-X {name}={value}" for name, value in pairs)])


def _kubernetes_wrapper(builder: Builder) -> Path:
    """A module that requires k8s.io/kubernetes and maps each staging module to its release."""
    k8s = versions.KUBERNETES
    work = builder.work_dir(f"kubernetes-{k8s}")
    ready = work / ".ready"
    if ready.is_file():
        return work
    for leftover in ("go.mod", "go.sum"):
        (work / leftover).unlink(missing_ok=True)
    builder.go("mod", "init", "imagegate.dev/testbed/kubernetes", cwd=work)
    builder.go("mod", "edit", "-go=1.26.0", f"-require=k8s.io/kubernetes@{k8s}", cwd=work)
    info = json.loads(builder.go("mod", "download", "-json", f"k8s.io/kubernetes@{k8s}", cwd=work))
    upstream = Path(info["GoMod"]).read_text()
    staging = re.findall(r"^\s*(k8s\.io/\S+)\s+=>\s+\./staging/", upstream, flags=re.MULTILINE)
    if not staging:
        raise BuildError(f"found no staging modules in k8s.io/kubernetes@{k8s}'s go.mod")
    release = versions.staging_version(k8s)
    builder.go("mod", "edit", *(f"-replace={m}={m}@{release}" for m in staging), cwd=work)
    # `godebug` only applies in the main module, so the wrapper must carry upstream's lines.
    godebug = [line for line in upstream.splitlines() if line.startswith("godebug")]
    if godebug:
        with (work / "go.mod").open("a") as handle:
            handle.write("\n" + "\n".join(godebug) + "\n")
    builder.go(
        "get",
        "-tool",
        f"k8s.io/kubernetes/cmd/kube-apiserver@{k8s}",
        cwd=work,
    )
    builder.go("get", "-tool", f"k8s.io/kubernetes/cmd/kubectl@{k8s}", cwd=work)
    ready.write_text(k8s)
    return work


def _kubernetes_ldflags() -> str:
    k8s = versions.KUBERNETES
    major, minor = k8s.removeprefix("v").split(".")[:2]
    stamp = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        stamp += [
            (f"{package}.gitVersion", k8s),
            (f"{package}.gitMajor", major),
            (f"{package}.gitMinor", minor),
            (f"{package}.gitTreeState", "clean"),
        ]
    return _ldflags(*stamp)


def build_kubernetes_command(command: str) -> Callable[[Builder, Tool, Path], None]:
    def build(builder: Builder, tool: Tool, output: Path) -> None:
        work = _kubernetes_wrapper(builder)
        builder.go(
            "build",
            "-trimpath",
            "-ldflags",
            _kubernetes_ldflags(),
            "-o",
            str(output),
            f"k8s.io/kubernetes/cmd/{command}",
            cwd=work,
        )

    return build


def build_etcd(builder: Builder, tool: Tool, output: Path) -> None:
    work = builder.work_dir(f"etcd-{tool.version}")
    if not (work / ".ready").is_file():
        for leftover in ("go.mod", "go.sum"):
            (work / leftover).unlink(missing_ok=True)
        builder.go("mod", "init", "imagegate.dev/testbed/etcd", cwd=work)
        builder.go("mod", "edit", "-go=1.26.0", cwd=work)
        builder.go("get", "-tool", f"go.etcd.io/etcd/server/v3@{tool.version}", cwd=work)
        (work / ".ready").write_text(tool.version)
    flags = _ldflags(("go.etcd.io/etcd/api/v3/version.GitSHA", tool.version))
    builder.go(
        "build",
        "-trimpath",
        "-ldflags",
        flags,
        "-o",
        str(output),
        "go.etcd.io/etcd/server/v3",
        cwd=work,
    )


def build_policy_controller(builder: Builder, tool: Tool, output: Path) -> None:
    """sigstore's policy-controller webhook, the peer the benchmarks compare against.

    Its go.mod replaces two k8s.io modules and glog, so `go install` refuses it: a wrapper
    module carries the same `replace` lines, read from upstream's go.mod at build time.
    """
    work = builder.work_dir(f"policy-controller-{tool.version}")
    if not (work / ".ready").is_file():
        for leftover in ("go.mod", "go.sum"):
            (work / leftover).unlink(missing_ok=True)
        builder.go("mod", "init", "imagegate.dev/peer/policycontroller", cwd=work)
        builder.go("mod", "edit", "-go=1.26.0", cwd=work)
        info = json.loads(
            builder.go(
                "mod", "download", "-json", f"{POLICY_CONTROLLER_MODULE}@{tool.version}", cwd=work
            )
        )
        upstream = Path(info["GoMod"]).read_text()
        replaces = re.findall(
            r"^\s*(?:replace\s+)?(\S+)\s+=>\s+(\S+)\s+(v\S+)\s*$", upstream, flags=re.M
        )
        builder.go(
            "mod",
            "edit",
            *(f"-replace={old}={new}@{version}" for old, new, version in replaces),
            cwd=work,
        )
        builder.go(
            "get", "-tool", f"{POLICY_CONTROLLER_MODULE}/cmd/webhook@{tool.version}", cwd=work
        )
        (work / ".ready").write_text(tool.version)
    builder.go(
        "build",
        "-trimpath",
        "-ldflags",
        _ldflags(("sigs.k8s.io/release-utils/version.gitVersion", tool.version)),
        "-o",
        str(output),
        f"{POLICY_CONTROLLER_MODULE}/cmd/webhook",
        cwd=work,
    )


def go_install(package: str, *stamp: tuple[str, str]) -> Callable[[Builder, Tool, Path], None]:
    """Recipe for modules without replace directives: plain `go install pkg@version`."""

    def build(builder: Builder, tool: Tool, output: Path) -> None:
        gobin = output.parent / "gobin"
        gobin.mkdir(parents=True, exist_ok=True)
        builder.go(
            "install",
            "-trimpath",
            "-ldflags",
            _ldflags(*stamp),
            f"{package}@{tool.version}",
            cwd=builder.work_dir("go-install"),
            env={"GOBIN": str(gobin), "GOFLAGS": "-buildvcs=false"},
        )
        (gobin / _command_name(package)).replace(output)
        shutil.rmtree(gobin, ignore_errors=True)

    return build


def _command_name(package: str) -> str:
    """The file `go install` writes: the last path element, skipping a major version (`/v12`)."""
    parts = package.split("/")
    if len(parts) > 1 and re.fullmatch(r"v\d+", parts[-1]):
        return parts[-2]
    return parts[-1]


def _registry_source() -> Path:
    return Path(str(resources.files("imagegate.testbed") / "goreg"))


def registry_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted(_registry_source().iterdir()):
        if path.suffix == ".go" or path.name in ("go.mod", "go.sum"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build_registry(builder: Builder, tool: Tool, output: Path) -> None:
    builder.go(
        "build",
        "-trimpath",
        "-ldflags",
        _ldflags(),
        "-o",
        str(output),
        ".",
        cwd=_registry_source(),
        env={"GOFLAGS": "-mod=readonly -buildvcs=false"},
    )


def helm_stamp() -> tuple[tuple[str, str], ...]:
    major, minor = versions.KUBERNETES.removeprefix("v").split(".")[:2]
    return (
        ("helm.sh/helm/v3/internal/version.version", versions.HELM),
        ("helm.sh/helm/v3/internal/version.gitTreeState", "clean"),
        # Unstamped, helm's offline default Kubernetes version is 1.20.
        ("helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor", major),
        ("helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor", minor),
        ("helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor", major),
        ("helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor", minor),
    )
