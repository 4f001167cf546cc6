"""What `imagegate run` loads: only what its policies need (design.md "Memory and start-up").

Each check runs in a fresh interpreter, so what an earlier test imported does not count. Memory
itself is measured by bench/memory.py, never asserted here; these say which modules load.
"""

from __future__ import annotations

import json
import subprocess
import sys

#: What `imagegate run` imports before it starts (commands/cli.py's `run` branch).
RUN_IMPORTS = (
    "from imagegate.commands import cli\n"
    "from imagegate.admission import server\n"
    "from imagegate.cluster import operator\n"
    "from imagegate.trail import logs\n"
)

#: A key-signed image verified as a key-only policy asks: a fresh P-256 key signs the
#: simple-signing payload of a digest, and the policy's authorities check it.
VERIFY_WITH_A_KEY = """
import base64, json
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from imagegate.core import keys
from imagegate.policy import model
from imagegate.signatures import authorities, cosign, roots

private = ec.generate_private_key(ec.SECP256R1())
pem = private.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
digest = "sha256:" + "ab" * 32
payload = json.dumps(
    {"critical": {"identity": {"docker-reference": "registry.invalid/app"},
                  "image": {"docker-manifest-digest": digest},
                  "type": "cosign container image signature"}, "optional": None}
).encode()
found = [cosign.FoundSignature("legacy", payload, private.sign(payload, ec.ECDSA(hashes.SHA256())),
                               payload)]
requirement = model.Signatures.model_validate(
    {"keys": [{"publicKey": pem.decode()}], "requireTransparencyLog": False}
)
root = roots.public_good()
assert root.document["mediaType"].startswith("application/vnd.dev.sigstore.trustedroot")
authorities.of_requirement(requirement, [keys.load_public_key(pem)], root).verify(found, digest)
"""


def loaded_after(code: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules named with one of `prefixes` that are loaded once `code` has run."""
    probe = (
        "import json, sys\n"
        + code
        + f"\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


KEYLESS_STACK = (
    # sigstore-python's verifier, OIDC, models and TUF client (its package itself, a version
    # string, is loaded to find the trusted root it ships).
    "sigstore.",
    "sigstore_models",
    "tuf",
    "rekor_types",
    "imagegate.signatures.keyless",
    "imagegate.signatures.fulcio",
)


def test_a_key_only_policy_never_loads_sigstores_keyless_stack() -> None:
    assert loaded_after(RUN_IMPORTS + VERIFY_WITH_A_KEY, KEYLESS_STACK) == []


def test_a_keyless_identity_loads_it_when_a_signature_is_checked() -> None:
    """The other side: laziness must not lose the keyless verifier (bundles, certificates)."""
    code = (
        RUN_IMPORTS
        + "from imagegate.signatures import roots\n"
        + "assert roots.public_good().parsed is not None\n"
    )
    loaded = loaded_after(code, ("sigstore.models",))
    assert loaded == ["sigstore.models"]


def test_talking_to_the_api_server_never_loads_the_clients_typed_core_api() -> None:
    """`CoreV1Api` imports ~250 pydantic models (80 MiB): the run path reads core objects as
    JSON (signatures/apiserver.py) through the same `ApiClient`."""
    code = RUN_IMPORTS + (
        "from kubernetes import client\n"
        "from imagegate.cluster import certs, policies, resources\n"
        "from imagegate.signatures import material\n"
        "from imagegate.trail import events\n"
        "api = client.ApiClient(client.Configuration())\n"
        "material.KubernetesMaterial(api)\n"
        "events.EventRecorder(api)\n"
        "policies.PolicyWatch(api, resources.PolicyResources(api))\n"
        # The background scan lists each kind (nothing listens on port 9: each list fails).
        "from imagegate.trail import reports, scan\n"
        "api.configuration.host = 'http://127.0.0.1:9'\n"
        "scanner = scan.PolicyReportScanner(api, policies.PolicyCache(api))\n"
        "for _, plural in reports.SCANNED.values():\n"
        "    try:\n"
        "        scanner._fetch_page(plural, '')\n"
        "    except Exception:\n"
        "        pass\n"
    )
    loaded = loaded_after(code, ("kubernetes.client.api.", "kubernetes.client.models."))
    for typed in ("core_v1_api", "apps_v1_api", "batch_v1_api"):
        assert f"kubernetes.client.api.{typed}" not in loaded
    assert not [name for name in loaded if name.startswith("kubernetes.client.models.v1_pod")]


#: What `import kubernetes` imported through its `__init__` and `imagegate run` never uses: the
#: kubeconfig loader's HTTP and OAuth stack, websocket-client, and the unused subpackages.
KUBERNETES_EAGER = (
    "requests",
    "requests_oauthlib",
    "oauthlib",
    "websocket",
    "kubernetes.config.kube_config",
    "kubernetes.stream",
    "kubernetes.dynamic",
    "kubernetes.watch",
    "kubernetes.utils.create_from_yaml",
    "kubernetes.leaderelection",
    "kubernetes.informer",
)

#: `kube.api_client()` in a Pod: the in-cluster loader, given a token and CA in a temporary
#: directory instead of the service account's mount.
IN_CLUSTER_CLIENT = """
import os, tempfile
from pathlib import Path
from kubernetes.config import incluster_config
from imagegate.cluster import kube
mount = Path(tempfile.mkdtemp())
(mount / "token").write_text("a-token")
(mount / "ca.crt").write_text("not read until a request is made")
incluster_config.SERVICE_TOKEN_FILENAME = str(mount / "token")
incluster_config.SERVICE_CERT_FILENAME = str(mount / "ca.crt")
os.environ.update(KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT="9")
api = kube.api_client(None)
assert api.configuration.host == "https://127.0.0.1:9", api.configuration.host
"""


def test_the_run_path_never_runs_kubernetes_eager_package_init() -> None:
    """lazypackages.py: kopf's and imagegate's `import kubernetes` load `kubernetes.client`
    only, and in a cluster the in-cluster loader without the kubeconfig one."""
    loaded = loaded_after(RUN_IMPORTS + IN_CLUSTER_CLIENT, KUBERNETES_EAGER)
    assert loaded == []


def test_kubernetes_other_names_still_load_when_used() -> None:
    """The other side: what the deferred `__init__` imported is there once it is asked for."""
    code = (
        RUN_IMPORTS
        + "import kubernetes\n"
        + "from kubernetes import config\n"
        + "assert kubernetes.__version__\n"
        + "assert callable(config.load_kube_config)\n"
        + "assert kubernetes.watch.Watch\n"
    )
    assert "kubernetes.watch" in loaded_after(code, ("kubernetes.watch",))


def test_the_run_paths_imports_are_frozen_out_of_the_collectors_reach() -> None:
    """`imagegate run` imports with the collector off, then freezes what the imports made
    (cli.py): it is on again after, and the import-time objects are in the permanent generation.
    A usage error (no TLS files) stops `run` right after its imports."""
    code = (
        "import gc\n"
        "from imagegate.commands import cli\n"
        "assert cli.main(['run']) == 2\n"
        "assert gc.isenabled()\n"
        "assert gc.get_freeze_count() > 20_000, gc.get_freeze_count()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr


#: `kube.api_client(path)` for `run --kubeconfig` with a client certificate (the test bed's).
KUBECONFIG_CLIENT = """
import base64, tempfile, yaml
from pathlib import Path
from imagegate.cluster import kube
data = base64.standard_b64encode(b"pem").decode()
path = Path(tempfile.mkdtemp()) / "kubeconfig"
path.write_text(yaml.safe_dump({
    "current-context": "c",
    "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:9",
                                           "certificate-authority-data": data}}],
    "users": [{"name": "u", "user": {"client-certificate-data": data,
                                     "client-key-data": data}}],
}))
assert kube.api_client(path).configuration.host == "https://127.0.0.1:9"
"""


def test_a_simple_kubeconfig_is_read_without_the_client_librarys_loader() -> None:
    """kube.py: `run --kubeconfig` with a certificate or token skips requests and oauthlib."""
    assert loaded_after(RUN_IMPORTS + KUBECONFIG_CLIENT, KUBERNETES_EAGER) == []


def test_the_run_paths_imports_read_no_source_file() -> None:
    """pydantic's `use_attribute_docstrings` read model.py's source at every start (a fifth of its
    import); the CRD's descriptions come from crd.py instead (test_crd.py checks the chart)."""
    probe = (
        "import inspect, json\n"
        "read = []\n"
        "real = inspect.findsource\n"
        "def recording(thing):\n"
        "    read.append(inspect.getsourcefile(thing) or '?')\n"
        "    return real(thing)\n"
        "inspect.findsource = recording\n" + RUN_IMPORTS + "print(json.dumps(read))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
