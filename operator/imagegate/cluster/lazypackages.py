"""Import `kubernetes` without what its `__init__` imports eagerly (design.md §11, start-up).

`import kubernetes` (kopf's first import of it, then ours) runs the package's `__init__`, which
imports every subpackage: `config` (its kubeconfig loader pulls in requests, requests-oauthlib,
oauthlib and PyYAML), `stream` (websocket-client), `dynamic`, `watch`, `utils`, `leaderelection`
and `informer`. `imagegate run` needs `kubernetes.client` and, in a cluster,
`kubernetes.config.incluster_config` (and `kubernetes.utils`' retry helpers, which the client
imports): the rest was a sixth of its start-up CPU (bench/startup.py).

`defer_package_init` registers a package whose `__init__` has not run: its submodules import as
usual (`from kubernetes import client`), and the first use of any other name of the package
(`kubernetes.config.load_kube_config`, `from kubernetes import __version__`) runs `__init__`
then, so nothing is lost, it only comes later.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

#: Deferred when `imagegate.cluster` is first imported (before kopf imports `kubernetes`).
DEFERRED = ("kubernetes", "kubernetes.config", "kubernetes.utils")


def defer_package_init(name: str) -> None:
    """Register package `name` with its `__init__` deferred (no-op once it is imported)."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not installed, or not a package: nothing to defer
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def run_init() -> None:
        if module.__dict__.pop("__getattr__", None) is not None:
            loader.exec_module(module)

    def deferred_getattr(attribute: str) -> Any:
        # `from package import name` asks for a submodule by attribute first: import it.
        if not attribute.startswith("__"):
            try:
                return importlib.import_module(f"{name}.{attribute}")
            except ModuleNotFoundError as error:
                if error.name != f"{name}.{attribute}":
                    raise
        run_init()
        return getattr(module, attribute)

    module.__dict__["__getattr__"] = deferred_getattr
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent and isinstance(sys.modules.get(parent), types.ModuleType):
        setattr(sys.modules[parent], child, module)


def defer_all() -> None:
    for name in DEFERRED:
        defer_package_init(name)
