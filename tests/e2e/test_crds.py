"""The generated CRDs on the real API server: accepted, and bad policies refused at apply time."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from imagegate.policy import model
from support import Cluster

pytestmark = [pytest.mark.controlplane, pytest.mark.usefixtures("crds")]
ROOT = Path(__file__).resolve().parents[2]


def _create(api: client.ApiClient, spec: dict[str, Any], name: str) -> dict[str, Any]:
    body = {
        "apiVersion": "imagegate.dev/v1alpha1",
        "kind": "ClusterImagePolicy",
        "metadata": {"name": name},
        "spec": spec,
    }
    objects = client.CustomObjectsApi(api)
    # Strict field validation, as kubectl uses by default: unknown fields are errors.
    created: dict[str, Any] = objects.create_cluster_custom_object(
        "imagegate.dev", "v1alpha1", "clusterimagepolicies", body, field_validation="Strict"
    )
    objects.delete_cluster_custom_object("imagegate.dev", "v1alpha1", "clusterimagepolicies", name)
    return created


def test_presets_apply_with_kubectl_and_defaults_are_filled_in(
    api: client.ApiClient, cluster: Cluster
) -> None:
    if cluster.control_plane is None or cluster.control_plane.binaries.kubectl is None:
        pytest.skip("kubectl comes with the local test bed")
    kubectl = [str(cluster.control_plane.binaries.kubectl), "--kubeconfig", str(cluster.kubeconfig)]
    applied = subprocess.run(
        [*kubectl, "apply", "--dry-run=server", "-f", str(ROOT / "policies")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("created (server dry run)") == len(
        list((ROOT / "policies").glob("*.yaml"))
    )
    created = _create(
        api, {"rewrites": [{"from": "docker.io/library/x", "to": "cgr.dev/c/x"}]}, "d"
    )
    assert created["spec"]["mode"] == "enforce"
    assert created["spec"]["pinDigests"] is True
    assert created["spec"]["rewrites"][0]["tag"] == "latest"


def test_a_catalog_rule_as_the_api_server_stores_it_still_parses(api: client.ApiClient) -> None:
    rules = [{"catalog": "chainguard", "allowLatestOnly": True}, {"catalog": "dhi"}]
    created = _create(api, {"rewrites": rules}, "catalog")
    assert created["spec"]["rewrites"][1] == {"catalog": "dhi", "tag": "latest"}  # defaulted
    spec = model.parse_spec(created["spec"])
    assert [rule.catalog for rule in spec.rewrites] == ["chainguard", "dhi"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"mode": "enforcing", "rewrites": [{"from": "docker.io/x/y", "to": "a.io/b"}]},
            "spec.mode",
        ),
        ({"sources": [{"name": "a", "images": ["Docker.io/*"]}]}, "spec.sources[0].images[0]"),
        ({}, "a policy needs sources, rewrites, or both"),
        (
            {"sources": [{"name": "a", "images": ["x.io/*"]}, {"name": "a", "images": ["y.io/*"]}]},
            "source names must be unique",
        ),
        (
            {
                "sources": [
                    {
                        "name": "a",
                        "images": ["x.io/*"],
                        "signatures": {
                            "keyless": [{"issuer": "i", "issuerRegExp": "i", "subject": "s"}]
                        },
                    }
                ]
            },
            "set exactly one of issuer and issuerRegExp",
        ),
        (
            {"sources": [{"name": "a", "images": ["x.io/*"], "signatures": {}}]},
            "name at least one authority",
        ),
        ({"sources": [{"name": "a", "images": ["x.io/*"], "typo": 1}]}, "typo"),
        (
            {"rewrites": [{"catalog": "dhi", "from": "docker.io/x/y", "to": "a.io/b"}]},
            "set either from and to, or catalog",
        ),
        ({"rewrites": [{"from": "docker.io/x/y"}]}, "set either from and to, or catalog"),
        ({"rewrites": [{"catalog": "dhi", "tag": "keep"}]}, "tag applies only with from and to"),
        (
            {"rewrites": [{"from": "docker.io/x/y", "to": "a.io/b", "allowLatestOnly": True}]},
            "allowLatestOnly applies only with catalog",
        ),
    ],
)
def test_bad_policies_are_refused_at_apply_time(
    api: client.ApiClient, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiException) as refused:
        _create(api, spec, "bad")
    # 422 Invalid for schema and CEL violations, 400 BadRequest for strict unknown fields.
    assert refused.value.status in (400, 422)
    assert message in refused.value.body
