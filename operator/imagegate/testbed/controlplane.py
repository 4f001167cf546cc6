"""etcd + kube-apiserver on loopback, started the way controller-runtime's envtest starts them.

There is no kubelet, controller-manager or scheduler: objects are admitted and stored, pods are
never run. That is all an admission controller needs to be tested for real. The API server
authenticates an `admin` user in `system:masters` by client certificate, authorises with RBAC,
and signs service-account tokens with a key made here.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import ssl
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imagegate.cluster import tls
from imagegate.errors import StartError, TestbedError
from imagegate.testbed import processes
from imagegate.testbed.build import CONTROL_PLANE_TOOLS, Builder

START_TIMEOUT = float(os.environ.get("KUBEBUILDER_CONTROLPLANE_START_TIMEOUT", "60").rstrip("s"))
_PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class ControlPlaneBinaries:
    etcd: Path
    kube_apiserver: Path
    kubectl: Path | None

    @classmethod
    def resolve(cls, builder: Builder | None = None) -> ControlPlaneBinaries:
        """Find the binaries as envtest does, building them only when none are given.

        Order: TEST_ASSET_{ETCD,KUBE_APISERVER,KUBECTL}, then $KUBEBUILDER_ASSETS/<name>, then
        imagegate's own cache (built from Go modules on first use).
        """
        given = {name: _given_binary(name) for name in ("etcd", "kube-apiserver", "kubectl")}
        if given["etcd"] is not None and given["kube-apiserver"] is not None:
            return cls(given["etcd"], given["kube-apiserver"], given["kubectl"])
        built = (builder or Builder()).ensure_all(CONTROL_PLANE_TOOLS)
        return cls(
            given["etcd"] or built["etcd"],
            given["kube-apiserver"] or built["kube-apiserver"],
            given["kubectl"] or built["kubectl"],
        )


def _given_binary(name: str) -> Path | None:
    explicit = os.environ.get("TEST_ASSET_" + name.upper().replace("-", "_"))
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    candidate = Path(explicit) if explicit else Path(assets) / name if assets else None
    if candidate is None:
        return None
    if not os.access(candidate, os.X_OK):
        source = "TEST_ASSET_*" if explicit else "KUBEBUILDER_ASSETS"
        raise TestbedError(f"{source} names {candidate}, which is not an executable {name}")
    return candidate


class ControlPlane:
    """A single-member etcd and a kube-apiserver, with an admin kubeconfig."""

    def __init__(self, binaries: ControlPlaneBinaries, workdir: Path, *, detached: bool = False):
        self.binaries = binaries
        self.workdir = workdir
        self.detached = detached
        self.certs = workdir / "certs"
        self.kubeconfig = workdir / "kubeconfig"
        self.etcd: processes.ManagedProcess | None = None
        self.apiserver: processes.ManagedProcess | None = None
        self.url = ""
        self.etcd_url = ""
        self._ca: tls.CertificateAuthority | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, *, apiserver_port: int | None = None) -> None:
        if apiserver_port is not None and processes.port_in_use(apiserver_port):
            raise StartError(
                f"port {apiserver_port} on 127.0.0.1 is in use: stop whatever holds it, or leave "
                "the port out to let the test bed pick a free one"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._write_certificates()
            self._start_etcd()
            self._start_apiserver(apiserver_port)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for process in (self.apiserver, self.etcd):
            if process is not None:
                process.stop()

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again on its port over the same etcd: its watch
        cache starts afresh at etcd's current revision, as after a rollout of the control plane
        (a watch from before then gets 410 Gone)."""
        if self.apiserver is None:
            raise TestbedError("the control plane is not started")
        port = urllib.parse.urlsplit(self.url).port
        self.apiserver.stop()
        self._start_apiserver(port)

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision (what kube-apiserver does every
        five minutes): no watch can start from before it. Returns that revision."""
        key = base64.b64encode(b"\0").decode()  # the range from the first key: any answer will do
        revision = int(self._etcd_call("/v3/kv/range", {"key": key})["header"]["revision"])
        self._etcd_call("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def _etcd_call(self, path: str, body: dict[str, object]) -> dict[str, Any]:
        """etcd's JSON gateway (plain HTTP on loopback, as the test bed starts it)."""
        request = urllib.request.Request(
            self.etcd_url + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            result: dict[str, Any] = json.load(answer)
        return result

    def pids(self) -> list[int]:
        """In stopping order: kube-apiserver before the etcd it depends on, or it hangs."""
        return [p.pid for p in (self.apiserver, self.etcd) if p is not None and p.pid is not None]

    # -- etcd -----------------------------------------------------------------------------------

    def _start_etcd(self) -> None:
        for attempt in range(_PORT_ATTEMPTS):
            client, peer = processes.free_port(), processes.free_port()
            client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
            etcd = processes.ManagedProcess(
                "etcd",
                [
                    str(self.binaries.etcd),
                    f"--data-dir={self.workdir / 'etcd'}",
                    f"--listen-client-urls={client_url}",
                    f"--advertise-client-urls={client_url}",
                    f"--listen-peer-urls={peer_url}",
                    f"--initial-advertise-peer-urls={peer_url}",
                    f"--initial-cluster=default={peer_url}",
                    # A test bed's data is thrown away: fsync only costs time.
                    "--unsafe-no-fsync=true",
                    "--log-level=warn",
                ],
                self.workdir / "logs" / "etcd.log",
                detached=self.detached,
            )
            etcd.start()
            try:
                etcd.wait_until(
                    functools.partial(_http_ok, client_url + "/health"),
                    timeout=START_TIMEOUT,
                    what="healthy",
                )
            except StartError:
                etcd.stop()
                if attempt + 1 < _PORT_ATTEMPTS and _lost_port_race(etcd.log_path):
                    continue
                raise
            self.etcd, self.etcd_url = etcd, client_url
            return

    # -- kube-apiserver -------------------------------------------------------------------------

    def _start_apiserver(self, fixed_port: int | None) -> None:
        for attempt in range(_PORT_ATTEMPTS):
            port = fixed_port or processes.free_port()
            url = f"https://127.0.0.1:{port}"
            apiserver = processes.ManagedProcess(
                "kube-apiserver",
                self._apiserver_args(port),
                self.workdir / "logs" / "kube-apiserver.log",
                env={**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1"},
                detached=self.detached,
            )
            apiserver.start()
            try:
                apiserver.wait_until(
                    functools.partial(self._ready, url), timeout=START_TIMEOUT, what="ready"
                )
            except StartError:
                apiserver.stop()
                if (
                    fixed_port is None
                    and attempt + 1 < _PORT_ATTEMPTS
                    and _lost_port_race(apiserver.log_path)
                ):
                    continue
                raise
            self.apiserver, self.url = apiserver, url
            self._write_kubeconfig()
            return

    def _apiserver_args(self, port: int) -> list[str]:
        c = self.certs
        return [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers={self.etcd_url}",
            f"--cert-dir={c}",
            f"--tls-cert-file={c / 'apiserver.crt'}",
            f"--tls-private-key-file={c / 'apiserver.key'}",
            f"--client-ca-file={c / 'client-ca.crt'}",
            f"--secure-port={port}",
            "--bind-address=127.0.0.1",
            # No default route in a sandbox: without this the server cannot pick an address.
            "--advertise-address=127.0.0.1",
            # The `kubernetes` Endpoints object may not hold a loopback address.
            "--endpoint-reconciler-type=none",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            # No controller-manager mints service-account tokens, so don't require them on pods.
            "--disable-admission-plugins=ServiceAccount",
            "--authorization-mode=RBAC",
            f"--service-account-issuer=https://127.0.0.1:{port}/",
            f"--service-account-key-file={c / 'sa.pub'}",
            f"--service-account-signing-key-file={c / 'sa.key'}",
        ]

    def _ready(self, url: str) -> bool:
        return _http_ok(url + "/readyz", context=self.ssl_context())

    def ssl_context(self) -> ssl.SSLContext:
        """An SSL context that trusts the API server and presents the admin client certificate."""
        context = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        context.load_cert_chain(self.certs / "admin.crt", self.certs / "admin.key")
        return context

    # -- files ----------------------------------------------------------------------------------

    def _write_certificates(self) -> None:
        self.certs.mkdir(parents=True, exist_ok=True)
        ca = tls.CertificateAuthority.create("imagegate-testbed-ca")
        serving = ca.issue(
            "kube-apiserver", dns_names=["localhost"], ip_addresses=["127.0.0.1"], server=True
        )
        client_ca = tls.CertificateAuthority.create("imagegate-testbed-client-ca")
        admin = client_ca.issue(
            "admin", organizations=["system:masters"], server=False, client=True
        )
        sa_key = tls.new_private_key()
        files = {
            "ca.crt": ca.cert_pem,
            "apiserver.crt": serving.cert_pem,
            "apiserver.key": serving.key_pem,
            "client-ca.crt": client_ca.cert_pem,
            "admin.crt": admin.cert_pem,
            "admin.key": admin.key_pem,
            "sa.key": tls.private_key_pem(sa_key),
            "sa.pub": tls.public_key_pem(sa_key),
        }
        for name, content in files.items():
            path = self.certs / name
            path.write_bytes(content)
            if name.endswith(".key"):
                path.chmod(0o600)
        self._ca = ca

    def _write_kubeconfig(self) -> None:
        def b64(name: str) -> str:
            return base64.b64encode((self.certs / name).read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "imagegate-testbed",
                    "cluster": {"server": self.url, "certificate-authority-data": b64("ca.crt")},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64("admin.crt"),
                        "client-key-data": b64("admin.key"),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "imagegate-testbed",
                    "context": {"cluster": "imagegate-testbed", "user": "admin"},
                }
            ],
            "current-context": "imagegate-testbed",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def version(self) -> dict[str, str]:
        with urllib.request.urlopen(self.url + "/version", context=self.ssl_context()) as reply:
            result: dict[str, str] = json.load(reply)
            return result


def _http_ok(url: str, *, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as reply:
            return int(reply.status) == 200
    except OSError:  # connection refused, not yet listening, or an HTTP error status
        return False


def _lost_port_race(log_path: Path) -> bool:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return "address already in use" in text
