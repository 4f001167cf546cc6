"""The `imagegate` command.

Every expected failure is an `ImagegateError` and ends as one line on stderr and a non-zero exit
status (2 for usage, 1 otherwise); a traceback means a bug.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imagegate import __version__
from imagegate.errors import ImagegateError, UsageError

if TYPE_CHECKING:
    from imagegate.commands import online
    from imagegate.registry import mirrors


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


def _worker_count(value: str) -> int:
    from imagegate.cluster import workers

    try:
        return workers.parse_workers(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError("a count of at least 1, or auto") from error


def _duty(value: str) -> float:
    duty = float(value)
    if not 0 < duty <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"a share of the time, in (0, 1]: not {value}")
    return duty


def _cmd_run(args: argparse.Namespace) -> int:
    # The run path's imports make ~70,000 objects that live as long as the process: without
    # the collector's passes over them while they are made (5% of start-up), and out of its
    # reach after (as `operator._start` does with what start-up made; design.md §11).
    gc.disable()
    from imagegate.admission import server
    from imagegate.cluster import operator
    from imagegate.trail import logs

    gc.freeze()
    gc.enable()

    tls: server.TLSFiles | operator.SelfManagedCertificates
    if args.tls_secret:
        if args.tls_cert or args.tls_key:
            raise UsageError("use either --tls-cert/--tls-key or --tls-secret, not both")
        tls = operator.SelfManagedCertificates(
            args.tls_secret, args.service_name, args.webhook_configuration, args.tls_dir
        )
    else:
        if not args.tls_cert or not args.tls_key:
            raise UsageError("give --tls-cert and --tls-key, or --tls-secret")
        if not args.tls_cert.is_file() or not args.tls_key.is_file():
            raise UsageError(f"TLS files not found: {args.tls_cert}, {args.tls_key}")
        tls = server.TLSFiles(args.tls_cert, args.tls_key)
    if args.mutate_budget is not None and not 0 < args.mutate_budget <= args.deadline:
        raise UsageError("--mutate-budget must be more than 0 and at most --deadline")
    if args.stale_digest_ttl < 0:
        raise UsageError("--stale-digest-ttl must be 0 (never) or more")
    logs.configure(args.log_format)
    operator.run(
        operator.OperatorConfig(
            kubeconfig=args.kubeconfig,
            tls=tls,
            host=args.host,
            port=args.port,
            deadline=args.deadline,
            mutate_budget=args.mutate_budget,
            stale_digest_ttl=args.stale_digest_ttl,
            log_admits=args.log_admits,
            insecure_registries=frozenset(args.insecure_registry),
            registry_mirrors=_registry_mirrors(args.registry_mirrors),
            health_port=args.health_port if args.health_port >= 0 else None,
            events=args.events,
            policy_reports=args.policy_reports,
            scan_interval=args.scan_interval,
            scan_duty=args.scan_duty,
            workers=args.workers,
            log_format=args.log_format,
        )
    )
    return 0


def _online_options(args: argparse.Namespace) -> online.OnlineOptions:
    from imagegate.commands import online

    return online.OnlineOptions(
        registry_config=args.registry_config,
        key_files=online.parse_named_files(args.key_file, "--key-file"),
        trust_roots=online.parse_named_files(args.trust_root, "--trust-root"),
        insecure_registries=frozenset(args.insecure_registry),
        registry_mirrors=_registry_mirrors(args.registry_mirrors),
    )


def _registry_mirrors(directory: Path | None) -> mirrors.Mirrors:
    """containerd's hosts.toml directory, read before start-up: a bad file is a usage error."""
    from imagegate.registry import mirrors

    if directory is None:
        return mirrors.NO_MIRRORS
    try:
        return mirrors.read_directory(directory)
    except mirrors.MirrorConfigError as error:
        raise UsageError(f"--registry-mirrors: {error.user_message}") from error


def _cmd_check(args: argparse.Namespace) -> int:
    from imagegate.commands import check

    return check.run(
        args.policy,
        args.manifests,
        output=args.output,
        namespace=args.namespace,
        namespace_labels=args.namespace_labels,
        verify=_online_options(args) if args.verify else None,
    )


def _cmd_verify(args: argparse.Namespace) -> int:
    from imagegate.commands import verify

    return verify.run(
        args.image,
        args.policy,
        options=_online_options(args),
        output=args.output,
        namespace=args.namespace,
        namespace_labels=args.namespace_labels,
    )


def _add_online_flags(parser: argparse.ArgumentParser) -> None:
    """Where `--verify` and `imagegate verify` find credentials, keys and trust roots."""
    group = parser.add_argument_group("registries (--verify, verify)")
    group.add_argument(
        "--registry-config",
        type=Path,
        default=None,
        metavar="PATH",
        help="docker config with registry credentials (default: ~/.docker/config.json)",
    )
    group.add_argument(
        "--key-file",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="public key PEM for a policy key's secretRef NAME (or NAMESPACE/NAME); repeatable",
    )
    group.add_argument(
        "--trust-root",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="trusted_root.json for a trustRoot configMapRef NAME (or NAMESPACE/NAME)",
    )
    group.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="reach this registry over plain HTTP (repeatable; for test registries only)",
    )
    _add_mirrors_flag(group)


def _add_mirrors_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--registry-mirrors DIR`, as `imagegate run` reads it (design.md §8)."""
    parser.add_argument(
        "--registry-mirrors",
        type=Path,
        default=None,
        metavar="DIR",
        help="read registries through mirrors: a directory of <host>/hosts.toml files, as "
        "containerd's config_path (e.g. /etc/containerd/certs.d)",
    )


def _add_scope_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-p",
        "--policy",
        action="append",
        required=True,
        metavar="POLICY.yaml",
        help="policy file (repeatable; - for stdin)",
    )
    parser.add_argument(
        "--namespace", default="default", help="for objects that do not name their namespace"
    )
    parser.add_argument(
        "--namespace-labels",
        default="",
        metavar="K=V,...",
        help="labels of that namespace, for policies with a namespaceSelector",
    )


def _cmd_audit(args: argparse.Namespace) -> int:
    from imagegate.commands import audit as trail

    return trail.run(
        kubeconfig=args.kubeconfig,
        since=args.since,
        namespace=args.namespace,
        policy=args.policy,
        output=args.output,
        reports=args.reports,
    )


def _cmd_catalog(args: argparse.Namespace) -> int:
    from imagegate.commands import catalog

    return catalog.run(args.search, target=args.target, output=args.output)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from imagegate.commands import migrate

    return migrate.run(
        args.manifests,
        policy_paths=args.policy,
        catalogs=args.catalog,
        cluster=args.cluster,
        kubeconfig=args.kubeconfig,
        namespace=args.namespace,
        output=args.output,
        change=args.format,
        verify=args.verify,
        insecure_registries=frozenset(args.insecure_registry),
        registry_mirrors=_registry_mirrors(args.registry_mirrors),
    )


def _cmd_selftest(args: argparse.Namespace) -> int:
    from imagegate.commands import selftest

    return selftest.run(args.url, ca_file=args.ca_file, timeout=args.timeout)


def _cmd_dev(args: argparse.Namespace) -> int:
    from imagegate.commands import dev

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
    certificates = run.add_argument_group(
        "certificates", "files (cert-manager, or your own), or made and kept by imagegate"
    )
    certificates.add_argument("--tls-cert", type=Path, help="serving certificate (PEM)")
    certificates.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    certificates.add_argument(
        "--tls-secret",
        metavar="NAME",
        help="make a CA and serving certificate once, keep them in this Secret (own namespace)",
    )
    certificates.add_argument(
        "--service-name", default="imagegate", help="the Service the certificate is for"
    )
    certificates.add_argument(
        "--webhook-configuration",
        default="imagegate",
        metavar="NAME",
        help="the Mutating/ValidatingWebhookConfiguration whose caBundle to set",
    )
    certificates.add_argument(
        "--tls-dir",
        type=Path,
        # The chart mounts an emptyDir at /tmp; certs.py writes the key 0600.
        default=Path("/tmp/imagegate-tls"),  # nosec B108
        help="where to write the certificate files the server loads",
    )
    run.add_argument(
        "--host",
        default="0.0.0.0",  # nosec B104
        help="address to listen on",
    )
    run.add_argument("--port", type=int, default=8443, help="HTTPS port of the webhooks")
    run.add_argument(
        "--health-port",
        type=int,
        default=8081,
        help="plain HTTP port of /healthz, /readyz and /metrics (-1: off, 0: any free port)",
    )
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    run.add_argument(
        "--log-admits",
        choices=["none", "sampled", "all"],
        default="sampled",
        help="log lines for plain admissions (denials, warnings and rewrites are always "
        "logged): none, sampled (1 in 100, plus a count line every 60 s) or all",
    )
    run.add_argument(
        "--no-events",
        dest="events",
        action="store_false",
        help="do not write Kubernetes Events for denials, warnings and rewrites",
    )
    run.add_argument(
        "--policy-reports",
        action="store_true",
        help="scan running workloads and write wgpolicyk8s.io PolicyReports",
    )
    run.add_argument(
        "--scan-interval", type=float, default=300.0, help="seconds between background scans"
    )
    run.add_argument(
        "--scan-duty",
        type=_duty,
        default=0.5,  # trail/scan.py DUTY
        help="share of the time a background scan works, in (0, 1]: after each page it reads "
        "and each report it writes it pauses for the rest, so that it and the API server leave "
        "the cores to admission (0.25: a scan takes 4 times as long; 1: no pauses)",
    )
    run.add_argument(
        "--deadline",
        type=float,
        default=8.0,
        help="seconds per admission before denying; keep it below the webhook timeout",
    )
    run.add_argument(
        "--mutate-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds /mutate may spend pinning digests before admitting unpinned with a "
        "warning (default: 40%% of --deadline; /validate still decides)",
    )
    run.add_argument(
        "--stale-digest-ttl",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="while a registry is unreachable, serve a tag's last verified digest and a "
        "digest's last positive signature verdict for up to this long, with a warning "
        "(0: never)",
    )
    run.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="reach this registry over plain HTTP (repeatable; for test registries only)",
    )
    _add_mirrors_flag(run)
    run.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        help="processes serving the webhooks on one port (SO_REUSEPORT); auto: the CPU limit "
        "rounded up (default: 1, this process serves)",
    )
    run.set_defaults(handler=_cmd_run)

    check = commands.add_parser(
        "check",
        help="judge manifests against policy files as the webhooks would (offline by default)",
        description="Exit status: 0 all admitted, 1 at least one denied, 2 bad input "
        "(a bad manifest file is reported and the others judged).",
    )
    _add_scope_flags(check)
    check.add_argument("-o", "--output", choices=["text", "json", "sarif"], default="text")
    check.add_argument(
        "--verify",
        action="store_true",
        help="resolve tags and verify signatures at the registries, as the webhook does",
    )
    _add_online_flags(check)
    check.add_argument("manifests", nargs="+", metavar="MANIFEST", help="files, or - for stdin")
    check.set_defaults(handler=_cmd_check)

    verify = commands.add_parser(
        "verify",
        help="verify one image under policy files and print each check, as cosign verify does",
        description="Exit status: 0 admitted, 1 denied, 2 bad input or usage.",
    )
    verify.add_argument("image", metavar="IMAGE", help="image reference (tag or digest)")
    _add_scope_flags(verify)
    verify.add_argument("-o", "--output", choices=["text", "json"], default="text")
    _add_online_flags(verify)
    verify.set_defaults(handler=_cmd_verify)

    audit = commands.add_parser(
        "audit",
        help="what imagegate denied, warned about and rewrote (Events), and what runs in "
        "violation (PolicyReports)",
    )
    audit.add_argument("--kubeconfig", type=Path, default=None, help="default: $KUBECONFIG")
    audit.add_argument(
        "--since", default="1h", help="time window, e.g. 30m, 24h (Events live 1h by default)"
    )
    audit.add_argument("-n", "--namespace", default=None, help="only this workload namespace")
    audit.add_argument("--policy", default=None, help="only this policy (ns/name for ImagePolicy)")
    audit.add_argument("-o", "--output", choices=["table", "json"], default="table")
    audit.add_argument(
        "--reports", action="store_true", help="also list violations from the PolicyReports"
    )
    audit.set_defaults(handler=_cmd_audit)

    catalog = commands.add_parser(
        "catalog",
        help="list and search the hardened equivalents that `rewrites: [{catalog: ...}]` uses",
        description="Exit status: 0 some entry matches, 1 none.",
    )
    catalog.add_argument(
        "search", nargs="?", default="", help="part of a source or target name (python, k8s.io)"
    )
    catalog.add_argument("--target", choices=["chainguard", "dhi"], default=None)
    catalog.add_argument("-o", "--output", choices=["table", "json"], default="table")
    catalog.set_defaults(handler=_cmd_catalog)

    migrate = commands.add_parser(
        "migrate",
        help="plan the move to hardened images: new references and the change to apply",
        description="Offline over manifests, or --cluster from the scan's PolicyReports. "
        "Exit status: 0 a plan was produced, 2 bad input.",
    )
    migrate.add_argument(
        "-p",
        "--policy",
        action="append",
        default=[],
        metavar="POLICY.yaml",
        help="plan with these policies' rewrites (repeatable; - for stdin)",
    )
    migrate.add_argument(
        "--catalog",
        action="append",
        default=[],
        choices=["dhi", "chainguard"],
        help="plan with this catalogue (repeatable: the first with an equivalent wins)",
    )
    migrate.add_argument(
        "--cluster", action="store_true", help="read the scan's PolicyReports, not manifests"
    )
    migrate.add_argument("--kubeconfig", type=Path, default=None, help="default: $KUBECONFIG")
    migrate.add_argument("-n", "--namespace", default=None, help="with --cluster: only here")
    migrate.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    migrate.add_argument(
        "--format",
        choices=["kubectl", "patch", "kustomize"],
        default=None,
        help="the change: kubectl set image lines, RFC 6902 JSON patches, kustomize images: "
        "entries (with -o json|yaml: print only that change)",
    )
    migrate.add_argument(
        "--verify",
        action="store_true",
        help="ask each target's registry whether its tag exists (uses `docker login`)",
    )
    migrate.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="with --verify: reach this registry over plain HTTP (for test registries only)",
    )
    _add_mirrors_flag(migrate)
    migrate.add_argument("manifests", nargs="*", metavar="MANIFEST", help="files, dirs, or -")
    migrate.set_defaults(handler=_cmd_migrate)

    selftest = commands.add_parser(
        "selftest",
        help="ask a running webhook for a decision and check the answer (the chart's helm test)",
    )
    selftest.add_argument("--url", required=True, help="https://SERVICE.NAMESPACE.svc/validate")
    selftest.add_argument("--ca-file", type=Path, default=None, help="CA of its certificate")
    selftest.add_argument("--timeout", type=float, default=10.0)
    selftest.set_defaults(handler=_cmd_selftest)

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
