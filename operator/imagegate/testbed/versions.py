"""The versions of every test-bed component, in one place.

Bumping a version here changes the cache key of that tool, so the next `imagegate testbed build`
rebuilds it and leaves the old binary where it was (it is keyed by version, never overwritten).
"""

from __future__ import annotations

KUBERNETES = "v1.37.2"
ETCD = "v3.7.3"
HELM = "v3.22.0"
COSIGN = "v3.1.3"
GO_CONTAINERREGISTRY = "v0.22.1"

#: Oldest Go toolchain that builds all of the above (Kubernetes 1.37 and etcd 3.7 say `go 1.26`).
MINIMUM_GO = (1, 26)


def staging_version(kubernetes: str = KUBERNETES) -> str:
    """Kubernetes v1.X.Y publishes its staging modules (k8s.io/api, ...) as v0.X.Y."""
    return "v0." + kubernetes.removeprefix("v1.")


#: The peer webhook `bench/peer.py` measures against (not part of the test bed).
POLICY_CONTROLLER = "v0.13.1"

#: The load generator `bench/run` drives every webhook with (not part of the test bed).
VEGETA = "v12.13.0"
