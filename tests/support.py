"""Helpers shared by the test tiers (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imagegate.admission import builder
from imagegate.testbed.controlplane import ControlPlane

# Moved to the test bed for `imagegate dev`; re-exported for the tests that import them here.
from imagegate.testbed.images import (  # noqa: F401
    COSIGN_PASSWORD,
    cosign_env,
    cosign_key_pair,
    cosign_sign,
    push_random_image,
)


def pod_review(namespace: str, image: str, *, name: str = "p") -> dict[str, Any]:
    """An AdmissionReview of a one-container Pod CREATE, as the API server would send it."""
    return builder.review_for(builder.pod(name, image), namespace=namespace)


def post_review(url: str, review: dict[str, Any], context: Any) -> dict[str, Any]:
    """POST `review` to a webhook over HTTPS (`context`: an ssl.SSLContext); its response."""
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(review).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as reply:
        answer: dict[str, Any] = json.loads(reply.read())["response"]
        return answer


@dataclass(frozen=True)
class Cluster:
    """A Kubernetes API server the e2e tier may use, and how its webhooks can reach us."""

    kubeconfig: Path
    #: The address our test webhooks listen on; the API server must be able to reach it.
    webhook_host: str
    #: The local control plane when we started one (None for an existing cluster).
    control_plane: ControlPlane | None


def push_key_signed_image(
    crane: Path, cosign: Path, registry: str, repository: str, workdir: Path
) -> tuple[str, str]:
    """A fresh key pair in `workdir` (cosign.key, cosign.pub), and an image pushed to
    `repository:v1` and signed with it (legacy .sig, no log); gives (image:v1, digest)."""
    cosign_key_pair(cosign, workdir)
    digest = push_random_image(crane, registry, repository, "v1", workdir)
    cosign_sign(cosign, workdir / "cosign.key", f"{registry}/{repository}@{digest}")
    return f"{registry}/{repository}:v1", digest


def key_secret(api_core: Any, namespace: str, public_key: str, name: str = "cosign") -> None:
    """A Secret holding `public_key` under `cosign.pub` (as `cosign generate-key-pair k8s://`)."""
    from kubernetes import client

    api_core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name), string_data={"cosign.pub": public_key}
        ),
    )


def docker_config_json(registry: str, username: str, password: str) -> str:
    """A .dockerconfigjson / config.json granting `username` access to `registry`."""
    import base64

    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {registry: {"auth": auth}}})


class RecordingWebhook:
    """An HTTPS admission webhook on a free port: answers with `decide(request)`, records calls.

    Plain stdlib server in a thread: the point is to prove the API server really calls a webhook
    over TLS, independently of imagegate's own serving code.
    """

    def __init__(self, host: str, decide: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        import http.server
        import ssl
        import tempfile
        import threading

        from imagegate.cluster import tls

        self.requests: list[dict[str, Any]] = []
        self.ca = tls.CertificateAuthority.create("test-webhook-ca")
        pair = self.ca.issue(
            "webhook",
            ip_addresses=[host] if host[0].isdigit() else [],
            dns_names=[] if host[0].isdigit() else [host],
        )
        self._dir = tempfile.TemporaryDirectory(prefix="imagegate-webhook-")
        cert, key = Path(self._dir.name) / "tls.crt", Path(self._dir.name) / "tls.key"
        cert.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                review = json.loads(self.rfile.read(length))
                outer.requests.append(review["request"])
                response = {"uid": review["request"]["uid"], **decide(review["request"])}
                body = json.dumps(
                    {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": response,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        bind = "0.0.0.0" if host != "127.0.0.1" else host
        self._server = http.server.ThreadingHTTPServer((bind, 0), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://{host}:{self._server.server_address[1]}/validate"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def ca_bundle(self) -> str:
        import base64

        return base64.b64encode(self.ca.cert_pem).decode()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._dir.cleanup()


def pad_signature_manifest(registry_url: str, repository: str, digest: str) -> int:
    """Make cosign's legacy `.sig` manifest of `digest` ~20 KB; return its new size.

    The padding is manifest annotations: the signed layer (payload and signature) is kept, so
    the signature still verifies; only the manifest a verifier must read whole grows.
    """
    import urllib.request

    oci_manifest = "application/vnd.oci.image.manifest.v1+json"
    url = f"{registry_url}/v2/{repository}/manifests/{digest.replace(':', '-')}.sig"
    request = urllib.request.Request(url, headers={"Accept": oci_manifest})
    with urllib.request.urlopen(request, timeout=10) as reply:
        manifest = json.loads(reply.read())
    manifest.setdefault("annotations", {}).update(
        {f"pad.example/{n}": "z" * 1000 for n in range(20)}
    )
    body = json.dumps(manifest).encode()
    put = urllib.request.Request(
        url, data=body, method="PUT", headers={"Content-Type": oci_manifest}
    )
    with urllib.request.urlopen(put, timeout=10) as reply:
        assert reply.status == 201
    return len(body)


#: The Helm chart in this repository.
CHART = Path(__file__).resolve().parents[1] / "charts" / "imagegate"
Manifest = dict[str, Any]


class Helm:
    """The real helm CLI with its state directories in a temporary folder, never in $HOME."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
            # helm template and lint never need a cluster; make sure none is reached.
            "KUBECONFIG": str(home / "no-kubeconfig"),
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            check=False,
            env=self.env,
            timeout=120,
        )

    def render(self, *args: str, namespace: str = "imagegate") -> subprocess.CompletedProcess[str]:
        """`helm template` of the chart, as it finished (a refusal is for the caller to read)."""
        return self.run("template", "ig", str(CHART), "--namespace", namespace, *args)

    def template(self, *args: str, namespace: str = "imagegate") -> list[Manifest]:
        done = self.render(*args, namespace=namespace)
        assert done.returncode == 0, done.stderr
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
