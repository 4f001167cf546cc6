"""/validate round trip over HTTPS on loopback: p50/p99, sequential and 8 concurrent clients.

Two servers in one run: the bare reviewers, and the reviewers as `imagegate run` wires them
(metrics recorder and answer observer, one JSON decision line per request written to
/dev/null), so the audit trail's cost is a ratio measured in the same run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).parent))

from common import POD, StaticPolicies, machine, review_body

from imagegate.admission import reviewers as webhook
from imagegate.admission.server import TLSFiles, WebhookServer, build_app, outcome
from imagegate.cluster import tls
from imagegate.trail import logs
from imagegate.trail.metrics import Metrics

REQUESTS = 2000


async def client_loop(
    session: aiohttp.ClientSession,
    url: str,
    context: ssl.SSLContext,
    count: int,
    offset: int,
    latencies: list[float],
) -> None:
    for n in range(count):
        body = review_body(offset + n, POD)
        started = time.perf_counter()
        async with session.post(
            url, data=body, ssl=context, headers={"Content-Type": "application/json"}
        ) as reply:
            answer = await reply.json()
        latencies.append(time.perf_counter() - started)
        assert answer["response"]["allowed"] is True, answer


def summary(name: str, latencies: list[float], elapsed: float) -> str:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000
    return (
        f"{name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, {len(ordered) / elapsed:,.0f} req/s "
        f"over {len(ordered)} requests"
    )


def bare_app() -> web.Application:
    source = StaticPolicies()
    return build_app(validate=webhook.Validator(source), mutate=webhook.Mutator(source))


def audited_app() -> web.Application:
    source = StaticPolicies()
    metrics = Metrics()
    handler = logging.FileHandler(os.devnull)
    handler.setFormatter(logs.JsonFormatter())
    logging.getLogger("imagegate.admission.decisions").addHandler(handler)
    logging.getLogger("imagegate.admission.decisions").setLevel(logging.INFO)
    return build_app(
        validate=webhook.Validator(source, recorders=[metrics]),
        mutate=webhook.Mutator(source, recorders=[metrics]),
        observe=lambda name, response: metrics.admission(name, outcome(response)),
    )


async def main() -> None:
    # Twice each, alternating: on a shared 2-core VM the first server measured runs slower,
    # whichever it is; compare the second round.
    for round_ in (1, 2):
        for name, make in (("bare", bare_app), ("with audit trail", audited_app)):
            print(f"-- round {round_}, {name}")
            await measure(make())
    print(f"client and server in one process on loopback, TLS 1.3 keep-alive; {machine()}")


async def measure(app: web.Application) -> None:
    ca = tls.CertificateAuthority.create("bench-ca")
    pair = ca.issue("imagegate", ip_addresses=["127.0.0.1"])
    with tempfile.TemporaryDirectory() as directory:
        files = TLSFiles(Path(directory) / "tls.crt", Path(directory) / "tls.key")
        files.cert.write_bytes(pair.cert_pem)
        files.key.write_bytes(pair.key_pem)
        server = WebhookServer(app, files, host="127.0.0.1", port=0)
        await server.start()
        url = f"https://127.0.0.1:{server.port}/validate"
        context = ssl.create_default_context(cadata=ca.cert_pem.decode())
        try:
            async with aiohttp.ClientSession() as session:
                await client_loop(session, url, context, 100, 0, [])  # warm up
                latencies: list[float] = []
                started = time.perf_counter()
                await client_loop(session, url, context, REQUESTS, 0, latencies)
                print(summary("sequential", latencies, time.perf_counter() - started))
                latencies = []
                started = time.perf_counter()
                per_client = REQUESTS // 8
                await asyncio.gather(
                    *(
                        client_loop(session, url, context, per_client, i * per_client, latencies)
                        for i in range(8)
                    )
                )
                print(summary("8 concurrent", latencies, time.perf_counter() - started))
        finally:
            await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
