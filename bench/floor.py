"""The floor: the least an aiohttp HTTPS admission webhook can do, in a process of its own.

It parses the AdmissionReview (to answer its uid, as any webhook must) and allows everything.
Whatever imagegate costs beyond this is imagegate's; what this costs is Python + aiohttp + TLS.

    python bench/floor.py CERT KEY PORT
"""

from __future__ import annotations

import json
import ssl
import sys

from aiohttp import web


async def allow(request: web.Request) -> web.Response:
    review = json.loads(await request.read())
    answer = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], "allowed": True},
    }
    return web.Response(body=json.dumps(answer).encode(), content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main(cert: str, key: str, port: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_post("/validate", allow)
    app.router.add_post("/mutate", allow)  # no patch: registered beside imagegate's configs
    app.router.add_get("/readyz", ready)
    web.run_app(app, host="127.0.0.1", port=int(port), ssl_context=context, print=None)


if __name__ == "__main__":
    main(*sys.argv[1:4])
