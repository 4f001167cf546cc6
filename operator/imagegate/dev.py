"""`imagegate dev`: the local demo on the embedded control plane.

Today it brings up the test bed (etcd, kube-apiserver, an OCI registry), proves the API server
answers by creating a namespace through it, and prints how to reach both. The policy demo joins it
once the webhooks exist.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
import time

from kubernetes import client

from imagegate import kube
from imagegate.errors import TestbedError
from imagegate.testbed.bed import Testbed

DEMO_NAMESPACE = "imagegate-demo"


def run(*, once: bool = False) -> int:
    started = time.monotonic()
    print("imagegate dev: starting the local control plane and registry ...", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Testbed() as bed:
        control_plane, registry = bed.control_plane, bed.registry
        if control_plane is None or registry is None:
            raise TestbedError("the test bed started without a control plane or registry")
        core = client.CoreV1Api(kube.api_client(control_plane.kubeconfig))
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=DEMO_NAMESPACE)))
        namespaces = sorted(
            ns.metadata.name
            for ns in core.list_namespace().items
            if ns.metadata and ns.metadata.name
        )
        version = control_plane.version()["gitVersion"]
        print(
            f"imagegate dev: ready in {time.monotonic() - started:.1f}s\n"
            f"  kube-apiserver {version} at {control_plane.url}\n"
            f"  namespaces: {', '.join(namespaces)}\n"
            f"  OCI registry (referrers API on) at {registry.url}\n"
            "\nIn another shell:\n"
            + "".join(f"  export {k}={shlex.quote(v)}\n" for k, v in bed.env().items())
            + f"  kubectl get namespaces\n  crane catalog {registry.address}\n",
            flush=True,
        )
        if once:
            return 0
        print("Ctrl-C stops everything and removes its files.", flush=True)
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
    print("imagegate dev: stopped", file=sys.stderr)
    return 0
