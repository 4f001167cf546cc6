"""Docker config Secrets → credentials, matched to a registry the way the kubelet does."""

from __future__ import annotations

import base64
import json

import pytest

from imagegate.cluster import credentials
from imagegate.core import workloads
from imagegate.registry.keychain import Credentials


def config(auths: dict[str, dict[str, str]]) -> bytes:
    return json.dumps({"auths": auths}).encode()


def auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def keychain(data: bytes, key: str = credentials.DOCKER_CONFIG_JSON) -> credentials.EntryKeychain:
    return credentials.EntryKeychain(credentials.parse_docker_config(data, key))


def test_docker_hub_entries_written_by_the_docker_cli_match_docker_io() -> None:
    found = keychain(config({"https://index.docker.io/v1/": auth("hub", "pw")}))
    assert found.credentials("docker.io", "library/nginx") == Credentials("hub", "pw")
    assert found.credentials("ghcr.io", "library/nginx") is None


def test_username_and_password_fields_are_read_as_well_as_auth() -> None:
    found = keychain(config({"ghcr.io": {"username": "u", "password": "p"}}))
    assert found.credentials("ghcr.io", "org/app") == Credentials("u", "p")


def test_the_legacy_dockercfg_format_has_no_auths_wrapper() -> None:
    data = json.dumps({"quay.io": auth("q", "pw")}).encode()
    found = keychain(data, credentials.DOCKER_CFG)
    assert found.credentials("quay.io", "a/b") == Credentials("q", "pw")


def test_ports_must_match_and_a_path_is_a_repository_prefix_on_segment_boundaries() -> None:
    found = keychain(
        config(
            {
                "registry.local:5000/team": auth("team", "1"),
                "registry.local:5000": auth("all", "2"),
            }
        )
    )
    assert found.credentials("registry.local:5000", "team/app") == Credentials("team", "1")
    assert found.credentials("registry.local:5000", "teamster/app") == Credentials("all", "2")
    assert found.credentials("registry.local", "team/app") is None


def test_a_wildcard_matches_one_dns_label_and_loses_to_an_exact_host() -> None:
    found = keychain(
        config({"*.azurecr.io": auth("wild", "1"), "prod.azurecr.io": auth("prod", "2")})
    )
    assert found.credentials("dev.azurecr.io", "app") == Credentials("wild", "1")
    assert found.credentials("prod.azurecr.io", "app") == Credentials("prod", "2")
    assert found.credentials("a.b.azurecr.io", "app") is None


def test_among_equally_specific_keys_the_earlier_source_wins() -> None:
    """keychain_for lists the policy's entries before the Pod's: the policy's win ties."""
    policy = credentials.parse_docker_config(config({"ghcr.io": auth("policy", "1")}))
    pod = credentials.parse_docker_config(
        config({"ghcr.io": auth("pod", "2"), "quay.io": auth("pod", "3")})
    )
    ordered = credentials.EntryKeychain([*policy, *pod])
    assert ordered.credentials("ghcr.io", "x") == Credentials("policy", "1")
    assert ordered.credentials("quay.io", "x") == Credentials("pod", "3")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"not json", "is not JSON"),
        (b"[]", "is not a JSON object"),
        (b'{"auths": 3}', "has no 'auths' object"),
    ],
)
def test_a_broken_secret_is_a_named_error(data: bytes, error: str) -> None:
    with pytest.raises(credentials.CredentialsError, match=error):
        credentials.parse_docker_config(data)


def test_entries_without_usable_credentials_are_skipped() -> None:
    entries = credentials.parse_docker_config(
        config({"a.io": {"email": "x@y"}, "b.io": {"auth": "%%%"}, "c.io": auth("u", "p")})
    )
    assert [entry.host for entry in entries] == ["c.io"]


def test_pull_context_reads_the_pod_spec_of_any_workload() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "spec": {
            "template": {
                "spec": {
                    "serviceAccountName": "builder",
                    "imagePullSecrets": [{"name": "a"}, {"name": ""}, "junk", {"name": "b"}],
                    "containers": [],
                }
            }
        },
    }
    assert workloads.pull_context(deployment) == workloads.PullContext("builder", ("a", "b"))
    assert workloads.pull_context({"apiVersion": "v1", "kind": "Pod", "spec": "junk"}) == (
        workloads.PullContext()
    )
