"""JSON to and from the API server through the kubernetes client's `ApiClient`, without its
typed APIs (design.md "Memory and start-up").

`kubernetes.client.CoreV1Api` imports every model its methods name (about 250 pydantic classes):
80 MiB of resident memory, half of a replica's, for reading a Secret. What imagegate reads and
writes of core objects it reads as JSON, so it goes through here: the same connection pool,
credentials, TLS and timeouts as the typed APIs, and the same `ApiException` on an error status.

Here, the lowest layer that talks to the API server (signatures' Secrets and ConfigMaps), so that
trail and cluster use it too.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from kubernetes import client

#: Seconds to connect, and to read one answer.
REQUEST_TIMEOUT = (5.0, 10.0)
MERGE_PATCH = "application/merge-patch+json"


def core_path(namespace: str | None, plural: str, name: str | None = None) -> str:
    """`/api/v1/[namespaces/NS/]PLURAL[/NAME]`, each part escaped."""
    path = "/api/v1"
    if namespace is not None:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{plural}"
    if name is not None:
        path += f"/{quote(name, safe='')}"
    return path


class ApiServer:
    """GET, POST, PUT and PATCH of JSON objects; an error status raises `client.ApiException`."""

    def __init__(
        self, api: client.ApiClient, timeout: float | tuple[float, float] = REQUEST_TIMEOUT
    ) -> None:
        self._api = api
        self._timeout = timeout

    def get(self, path: str, query: dict[str, str | int] | None = None) -> dict[str, Any]:
        return self._call("GET", path, query=query)

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", path, body=body)

    def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("PUT", path, body=body)

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", path, body=body, content_type=MERGE_PATCH)

    def open_watch(self, path: str, query: dict[str, str | int], read_timeout: float) -> Any:
        """A WATCH as an open response (a urllib3 `HTTPResponse`): its body is one JSON event
        per line, read with `stream()`; the caller closes it. `read_timeout` bounds the wait
        for each read, not the watch."""
        method, url, headers, _, post = self._api.param_serialize(
            method="GET",
            resource_path=path,
            query_params=[*query.items(), ("watch", "true")],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        timeout = self._timeout[0] if isinstance(self._timeout, tuple) else self._timeout
        response: Any = self._api.call_api(
            method,
            url,
            headers,
            None,
            post,
            _request_timeout=(timeout, read_timeout),
        )
        if not 200 <= response.status < 300:
            response.read()
            raise client.ApiException(http_resp=response)
        return response.response  # the urllib3 response under the client's wrapper

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str | int] | None = None,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, serialized, post = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(
            method, url, headers, serialized, post, _request_timeout=self._timeout
        )
        response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status < 300:
            raise client.ApiException(http_resp=response)
        answer: dict[str, Any] = json.loads(response.data or b"{}")
        return answer
