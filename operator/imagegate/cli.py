"""The `imagegate` command.

Every expected failure is an `ImagegateError` and ends as one line on stderr and a non-zero exit
status (2 for usage, 1 otherwise); a traceback means a bug.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from imagegate import __version__
from imagegate.errors import ImagegateError, UsageError


def _print_env(env: dict[str, str]) -> None:
    for name, value in env.items():
        print(f"export {name}={shlex.quote(value)}")


def _cmd_testbed(args: argparse.Namespace) -> int:
    from imagegate.testbed import bed, build

    if args.action == "build":
        builder = build.Builder()
        for name, path in builder.ensure_all(build.ALL_TOOLS).items():
            print(f"{name}\t{path}")
        return 0
    if args.action == "up":
        state, started = bed.up(apiserver_port=args.port)
        print(
            ("# started" if started else "# already running")
            + f": kube-apiserver {state.apiserver_url}, registry {state.registry}",
            file=sys.stderr,
        )
        print('# run:  eval "$(imagegate testbed env)"', file=sys.stderr)
        _print_env(state.env())
        return 0
    if args.action == "env":
        running = bed.running_state()
        if running is None:
            raise ImagegateError("no test bed is running: start one with `imagegate testbed up`")
        _print_env(running.env())
        return 0
    if args.action == "down":
        print("stopped" if bed.down() else "no test bed was running", file=sys.stderr)
        return 0
    raise UsageError(f"unknown testbed action {args.action!r}")


def _cmd_run(args: argparse.Namespace) -> int:
    from imagegate import operator, server

    if not args.tls_cert.is_file() or not args.tls_key.is_file():
        raise UsageError(f"TLS files not found: {args.tls_cert}, {args.tls_key}")
    operator.run(
        operator.OperatorConfig(
            kubeconfig=args.kubeconfig,
            tls=server.TLSFiles(args.tls_cert, args.tls_key),
            host=args.host,
            port=args.port,
            deadline=args.deadline,
            insecure_registries=frozenset(args.insecure_registry),
        )
    )
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from imagegate import check

    return check.run(
        args.policy,
        args.manifests,
        output=args.output,
        namespace=args.namespace,
        namespace_labels=args.namespace_labels,
    )


def _cmd_dev(args: argparse.Namespace) -> int:
    from imagegate import dev

    return dev.run(once=args.once)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagegate",
        description="Admit only container images from trusted, signed sources.",
    )
    parser.add_argument("--version", action="version", version=f"imagegate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    testbed = commands.add_parser(
        "testbed",
        help="build, start and stop the local test bed (etcd, kube-apiserver, OCI registry)",
    )
    testbed.add_argument("action", choices=["build", "up", "down", "env"])
    testbed.add_argument(
        "--port", type=int, default=None, help="kube-apiserver port for `up` (default: a free one)"
    )
    testbed.set_defaults(handler=_cmd_testbed)

    run = commands.add_parser(
        "run", help="run the operator: watch policies and serve the admission webhooks"
    )
    run.add_argument(
        "--kubeconfig", type=Path, default=None, help="default: the in-cluster service account"
    )
    run.add_argument("--tls-cert", type=Path, required=True, help="serving certificate (PEM)")
    run.add_argument("--tls-key", type=Path, required=True, help="its private key (PEM)")
    run.add_argument("--host", default="0.0.0.0", help="address to listen on")
    run.add_argument("--port", type=int, default=8443)
    run.add_argument(
        "--deadline",
        type=float,
        default=8.0,
        help="seconds per admission before denying; keep it below the webhook timeout",
    )
    run.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="reach this registry over plain HTTP (repeatable; for test registries only)",
    )
    run.set_defaults(handler=_cmd_run)

    check = commands.add_parser(
        "check",
        help="judge manifests against policy files, offline, as the webhooks would",
        description="Exit status: 0 all admitted, 1 at least one denied, 2 bad input.",
    )
    check.add_argument(
        "-p",
        "--policy",
        action="append",
        required=True,
        metavar="POLICY.yaml",
        help="policy file (repeatable; - for stdin)",
    )
    check.add_argument("-o", "--output", choices=["text", "json"], default="text")
    check.add_argument(
        "--namespace", default="default", help="for objects that do not name their namespace"
    )
    check.add_argument(
        "--namespace-labels",
        default="",
        metavar="K=V,...",
        help="labels of that namespace, for policies with a namespaceSelector",
    )
    check.add_argument("manifests", nargs="+", metavar="MANIFEST", help="files, or - for stdin")
    check.set_defaults(handler=_cmd_check)

    dev = commands.add_parser(
        "dev", help="run the local demo on the embedded control plane (Ctrl-C stops it)"
    )
    dev.add_argument(
        "--once", action="store_true", help="start, run the demo, stop and exit (for CI)"
    )
    dev.set_defaults(handler=_cmd_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
    except UsageError as error:
        print(f"imagegate: {error.user_message}", file=sys.stderr)
        return 2
    except ImagegateError as error:
        print(f"imagegate: {error.user_message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `imagegate check ... | head`: the reader has all it wanted
        sys.stderr.close()
        return 0
    return result


if __name__ == "__main__":
    sys.exit(main())
