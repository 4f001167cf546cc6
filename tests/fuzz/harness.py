"""The real webhook app (Validator and Mutator over a static chainguard-only policy), for the
fuzz slice (in-process, plain HTTP) and the long run (`bench/fuzz.py`, over HTTPS); and an
in-memory registry that serves signature layers to the real verifier."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from fuzz import strategies
from imagegate.admission import reviewers
from imagegate.admission.server import build_app
from imagegate.policy import compile as policy_compile
from imagegate.policy import engine, model
from imagegate.registry import client as registry
from imagegate.signatures import cosign

HOST, REPOSITORY = "registry.test", "team/app"


class StaticPolicies:
    """A `PolicySource` holding the one chainguard-only policy; every namespace unlabelled."""

    def __init__(self) -> None:
        document = model.parse_policy_document(strategies.POLICY)
        self._policies = [policy_compile.compile_policy(document)]

    def policies(self) -> Sequence[engine.CompiledPolicy]:
        return self._policies

    async def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return {"kubernetes.io/metadata.name": namespace}


def webhook_app(deadline: float = 5.0) -> web.Application:
    """No verifier and no resolver: the policy asks for neither signatures nor pinning."""
    source = StaticPolicies()
    return build_app(
        validate=reviewers.Validator(source),
        mutate=reviewers.Mutator(source),
        deadline=deadline,
    )


class Registry:
    """In memory: one `.sig` manifest, some v0.3 bundle referrers, blobs by their digest."""

    def __init__(self, layers: list[tuple[dict[str, Any], bytes]], bundles: list[bytes]) -> None:
        self.blobs = {cosign_digest(blob): blob for _, blob in layers}
        self.blobs.update({cosign_digest(raw): raw for raw in bundles})
        self.sig_manifest = json.dumps({"layers": [layer for layer, _ in layers]}).encode()
        self.bundle_manifests = {
            f"sha256:{index:064x}": json.dumps(
                {"layers": [{"mediaType": cosign.BUNDLE_V03, "digest": cosign_digest(raw)}]}
            ).encode()
            for index, raw in enumerate(bundles)
        }

    async def manifest(self, _host: str, _repository: str, ref: str, **_: Any) -> tuple[bytes, str]:
        body = self.sig_manifest if ref.endswith(".sig") else self.bundle_manifests.get(ref)
        if body is None:
            raise registry.ManifestUnknown(f"no manifest {ref}")
        return body, cosign_digest(body)

    async def blob(self, _host: str, _repository: str, digest: str, **_: Any) -> bytes:
        if digest not in self.blobs:
            raise registry.ManifestUnknown(f"no blob {digest}")
        return self.blobs[digest]

    async def referrers(self, *_: Any, **__: Any) -> list[Any]:
        return [
            registry.Descriptor(cosign.BUNDLE_V03, digest, 1) for digest in self.bundle_manifests
        ]


def cosign_digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()
