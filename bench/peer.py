"""imagegate's /validate against sigstore policy-controller's /validations, in the same run.

Both answer the same AdmissionReview (a 3-container Pod whose images are pinned by digest, as
policy-controller requires) on loopback over HTTPS, sequentially, with keep-alive:
- policy-controller v0.13.1, built from its Go module (`build.POLICY_CONTROLLER`, on demand),
  run out of cluster against the test bed's kube-apiserver with its own CRDs and ConfigMaps
  (read from the Go module cache, not copied), TUF off, one ClusterImagePolicy matching every
  image with a `static: pass` authority: no registry, no signature;
- imagegate, one ClusterImagePolicy trusting every image (`**`), no signatures.

So both do the same job: match images against a policy and admit, with no registry access.
What is not compared: signature verification (bench/verify.py does that against cosign),
and each webhook's mutating path.

Each round measures twice. Back to back, policy-controller's figure is its Kubernetes client's
rate limit, not its work: every admission GETs the Pod's ServiceAccount (for its registry
keychain), and knative's sharedmain caps that client at 5 QPS per controller, 8 controllers =
40 QPS (v0.13.1 parses its flags before knative registers `--kube-api-qps`, so it cannot be
raised), so past the burst each admission waits ~25 ms. Paced (a pause before each request,
untimed, keeping both under 40 admissions/s), the figure is its latency unthrottled.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))

from common import machine, review_body
from kubernetes import client

from imagegate.admission import reviewers as webhook
from imagegate.admission.server import TLSFiles, WebhookServer, build_app
from imagegate.cluster import kube, tls
from imagegate.policy import compile as policy_compile
from imagegate.policy import engine, model
from imagegate.testbed import build, processes, recipes
from imagegate.testbed.controlplane import ControlPlane, ControlPlaneBinaries

REQUESTS = 1000
#: Paced mode: fewer requests (each costs the pause too) and the pause before each, untimed.
PACED_REQUESTS = 500
PAUSE = 0.03
SYSTEM_NAMESPACE = "cosign-system"
DIGEST = "@sha256:" + "ab" * 32
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {
        "initContainers": [{"name": "setup", "image": "cgr.dev/chainguard/busybox" + DIGEST}],
        "containers": [
            {"name": "web", "image": "cgr.dev/chainguard/nginx" + DIGEST},
            {"name": "sidecar", "image": "docker.io/library/redis" + DIGEST},
        ],
    },
}
CONFIGS = (
    "100-namespace.yaml",
    "300-clusterimagepolicy.yaml",
    "300-trustroot.yaml",
    "config-image-policies.yaml",
    "config-leader-election.yaml",
    "config-logging.yaml",
    "config-observability.yaml",
    "config-policy-controller.yaml",
    "config-sigstore-keys.yaml",
    # Not its webhook configurations: the API server would call a Service that does not exist
    # here (the benchmark posts to the process directly), and refuse the policy below.
)


async def measure(url: str, context: ssl.SSLContext, pause: float = 0.0) -> list[float]:
    latencies = []
    count = PACED_REQUESTS if pause else REQUESTS
    async with aiohttp.ClientSession() as session:
        for n in range(count + 100):
            if pause:
                await asyncio.sleep(pause)
            started = time.perf_counter()
            async with session.post(
                url,
                data=review_body(n, POD),
                ssl=context,
                headers={"Content-Type": "application/json"},
            ) as reply:
                text = await reply.text()
            if n >= 100:  # the first 100 warm up
                latencies.append(time.perf_counter() - started)
            answer = json.loads(text) if text.startswith("{") else {}
            if (answer.get("response") or {}).get("allowed") is not True:
                raise SystemExit(f"{url} did not admit request {n}: HTTP {reply.status} {text!r}")
    return latencies


def summary(name: str, latencies: list[float]) -> tuple[float, str]:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000
    return p50, f"{name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms over {len(ordered)} requests"


def module_config_dir(builder: build.Builder) -> Path:
    work = builder.work_dir(f"policy-controller-{build.POLICY_CONTROLLER.version}")
    module = f"{recipes.POLICY_CONTROLLER_MODULE}@{build.POLICY_CONTROLLER.version}"
    info = json.loads(builder.go("mod", "download", "-json", module, cwd=work))
    return Path(info["Dir"]) / "config"


def kubectl_apply(kubectl: Path, kubeconfig: Path, manifest: Path) -> None:
    done = subprocess.run(
        [str(kubectl), "--kubeconfig", str(kubeconfig), "apply", "-f", str(manifest)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"kubectl apply -f {manifest}: {done.stderr.strip()}")


def start_policy_controller(
    builder: build.Builder, plane: ControlPlane, workdir: Path
) -> tuple[processes.ManagedProcess, str, ssl.SSLContext]:
    kubectl = builder.ensure(build.KUBECTL)
    config = module_config_dir(builder)
    for name in CONFIGS:
        kubectl_apply(kubectl, plane.kubeconfig, config / name)
    # Its CRD converts through a webhook Service that does not exist here; the policy below is
    # written in the stored version's shape, so no conversion is needed.
    done = subprocess.run(
        [
            str(kubectl),
            "--kubeconfig",
            str(plane.kubeconfig),
            "patch",
            "crd",
            "clusterimagepolicies.policy.sigstore.dev",
            "--type=json",
            "-p",
            json.dumps(
                [{"op": "replace", "path": "/spec/conversion", "value": {"strategy": "None"}}]
            ),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"cannot turn off the CRD's conversion webhook: {done.stderr.strip()}")
    policy = {
        "apiVersion": "policy.sigstore.dev/v1beta1",
        "kind": "ClusterImagePolicy",
        "metadata": {"name": "everything"},
        "spec": {"images": [{"glob": "**"}], "authorities": [{"static": {"action": "pass"}}]},
    }
    (workdir / "cip.json").write_text(json.dumps(policy))
    kubectl_apply(kubectl, plane.kubeconfig, workdir / "cip.json")
    # v0.13.1 copies its webhook options into the context before parsing --secure-port, so
    # the flag has no effect: it always listens on 8443 (which must be free).
    port = 8443
    process = processes.ManagedProcess(
        "policy-controller",
        [
            str(builder.ensure(build.POLICY_CONTROLLER)),
            "--disable-tuf",
        ],
        workdir / "policy-controller.log",
        env={
            **os.environ,
            "KUBECONFIG": str(plane.kubeconfig),
            "SYSTEM_NAMESPACE": SYSTEM_NAMESPACE,
            "METRICS_DOMAIN": "sigstore.dev/policy",
            "WEBHOOK_NAME": "webhook",
        },
    )
    process.start()
    core = client.CoreV1Api(kube.api_client(plane.kubeconfig))
    # Its install manifests create this Secret empty; its certificate controller fills it.
    core.create_namespaced_secret(
        SYSTEM_NAMESPACE, client.V1Secret(metadata=client.V1ObjectMeta(name="webhook-certs"))
    )
    ca_pem = b""

    def has_certificate() -> bool:
        nonlocal ca_pem
        try:
            secret = core.read_namespaced_secret("webhook-certs", SYSTEM_NAMESPACE)
        except client.ApiException:
            return False  # not made yet
        ca_pem = base64.b64decode((secret.data or {}).get("ca-cert.pem", ""))
        return bool(ca_pem)

    process.wait_until(has_certificate, timeout=120, what="its serving certificate")
    url = f"https://127.0.0.1:{port}/validations"
    last: list[object] = []
    contexts: list[ssl.SSLContext] = []

    def serving() -> bool:
        # Trust exactly the certificate it serves (loopback, benchmark only): knative swaps
        # its certificate in from the Secret a moment after starting.
        pem = ssl.get_server_certificate(("127.0.0.1", port))
        context = ssl.create_default_context(cadata=pem)
        context.check_hostname = False  # issued for webhook.cosign-system.svc
        try:
            answer = asyncio.run(_one(url, context))
        except (aiohttp.ClientError, OSError, KeyError) as error:
            last[:] = [error]
            return False
        last[:] = [answer]
        contexts[:] = [context]
        return bool(answer.get("allowed"))

    try:
        process.wait_until(serving, timeout=60, what="admitting on /validations")
    except Exception:
        print(f"policy-controller's last answer: {last}", file=sys.stderr)
        raise
    return process, url, contexts[0]


def apply_key_policy(
    builder: build.Builder, plane: ControlPlane, workdir: Path, glob: str, public_key: str
) -> None:
    """A second ClusterImagePolicy: images matching `glob` need a cosign signature by
    `public_key` (a `key:` authority with no `ctlog`, so no transparency log is asked for)."""
    policy = {
        "apiVersion": "policy.sigstore.dev/v1beta1",
        "kind": "ClusterImagePolicy",
        "metadata": {"name": "signed"},
        "spec": {
            "images": [{"glob": glob}],
            "authorities": [{"name": "bench-key", "key": {"data": public_key}}],
        },
    }
    (workdir / "cip-signed.json").write_text(json.dumps(policy))
    kubectl_apply(builder.ensure(build.KUBECTL), plane.kubeconfig, workdir / "cip-signed.json")


async def _one(url: str, context: ssl.SSLContext) -> dict[str, Any]:
    """One review's response, or KeyError saying what came back instead."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=review_body(0, POD), ssl=context, headers={"Content-Type": "application/json"}
        ) as reply,
    ):
        text = await reply.text()
    try:
        response: dict[str, Any] = json.loads(text)["response"]
    except (ValueError, KeyError, TypeError) as error:
        raise KeyError(f"HTTP {reply.status}: {text[:200]!r}") from error
    return response


def imagegate_policy() -> list[engine.CompiledPolicy]:
    document = model.parse_policy_document(
        {
            "apiVersion": "imagegate.dev/v1alpha1",
            "kind": "ClusterImagePolicy",
            "metadata": {"name": "everything"},
            "spec": {"sources": [{"name": "all", "images": ["**"]}]},
        }
    )
    return [policy_compile.compile_policy(document)]


class OnePolicy:
    def __init__(self) -> None:
        self._policies = imagegate_policy()

    def policies(self) -> list[engine.CompiledPolicy]:
        return self._policies

    async def namespace_labels(self, namespace: str) -> dict[str, str]:
        return {}


async def imagegate_latencies(workdir: Path, pause: float) -> list[float]:
    ca = tls.CertificateAuthority.create("bench-ca")
    pair = ca.issue("imagegate", ip_addresses=["127.0.0.1"])
    files = TLSFiles(workdir / "tls.crt", workdir / "tls.key")
    files.cert.write_bytes(pair.cert_pem)
    files.key.write_bytes(pair.key_pem)
    source = OnePolicy()
    server = WebhookServer(
        build_app(validate=webhook.Validator(source), mutate=webhook.Mutator(source)),
        files,
        host="127.0.0.1",
        port=0,
    )
    await server.start()
    try:
        context = ssl.create_default_context(cadata=ca.cert_pem.decode())
        return await measure(f"https://127.0.0.1:{server.port}/validate", context, pause)
    finally:
        await server.stop()


def main() -> None:
    builder = build.Builder()
    started = time.monotonic()
    builder.ensure(build.POLICY_CONTROLLER)
    took = time.monotonic() - started
    print(f"policy-controller {build.POLICY_CONTROLLER.version} ready in {took:.0f} s")
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        plane = ControlPlane(ControlPlaneBinaries.resolve(builder), workdir / "plane")
        plane.start()
        try:
            process, url, context = start_policy_controller(builder, plane, workdir)
            try:
                for round_ in (1, 2):  # alternating, twice: this VM's speed drifts
                    for mode, pause in (("back to back", 0.0), (f"paced ({PAUSE:.2f} s)", PAUSE)):
                        peer = asyncio.run(measure(url, context, pause))
                        ours = asyncio.run(imagegate_latencies(workdir, pause))
                        peer_p50, peer_line = summary("policy-controller /validations", peer)
                        our_p50, our_line = summary("imagegate /validate", ours)
                        print(f"-- round {round_}, {mode}\n{peer_line}\n{our_line}")
                        print(f"ratio imagegate/policy-controller (p50): {our_p50 / peer_p50:.2f}")
            finally:
                process.stop()
        finally:
            plane.stop()
    print(
        "same AdmissionReview, loopback, TLS, keep-alive, sequential; paced = a pause before "
        f"each request, untimed, under policy-controller's 40 QPS API client limit; {machine()}"
    )


if __name__ == "__main__":
    main()
