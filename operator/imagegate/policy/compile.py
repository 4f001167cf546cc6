"""Policy resources → the engine's compiled policies (globs compiled, selectors built)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

from imagegate.core import reference
from imagegate.policy import engine, glob, model, selectors

#: `kubectl describe` names for each kind, for the reason a broken policy gives.
_SHORT_NAMES = {model.CLUSTER_KIND: "cip", model.NAMESPACED_KIND: "imagepolicy"}


def compile_resource(body: Mapping[str, Any]) -> engine.CompiledPolicy:
    """A live resource → compiled policy, or `model.PolicyError` naming the bad field.

    What the operator enforces and what the policy admission webhook lets through: one function,
    so the webhook never admits a policy the operator cannot compile.
    """
    return compile_policy(model.parse_policy_document(body))


def compile_broken(body: Mapping[str, Any], error: str) -> engine.CompiledPolicy:
    """A policy that cannot be compiled, as one that fails closed in the scope it can read.

    Scope: an ImagePolicy's namespace; a ClusterImagePolicy's namespaceSelector when that part
    parses, else every namespace. Mode: the spec's when it is a valid one, else enforce.
    """
    kind = body.get("kind") or model.CLUSTER_KIND
    metadata = body.get("metadata") or {}
    name = str(metadata.get("name") or "")
    namespace = (metadata.get("namespace") or "default") if kind == model.NAMESPACED_KIND else None
    spec = body.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    mode = spec.get("mode", "enforce")
    modes = {m.value for m in engine.Mode}
    where = f" -n {namespace}" if namespace else ""
    describe = f"kubectl describe {_SHORT_NAMES.get(kind, 'cip')} {name}{where}"
    return engine.CompiledPolicy(
        name=name,
        namespace=namespace,
        mode=engine.Mode(mode) if isinstance(mode, str) and mode in modes else engine.Mode.ENFORCE,
        selector=_readable_selector(spec.get("namespaceSelector")),
        pin_digests=False,
        uid=str(metadata.get("uid") or ""),
        broken=f"policy {name} cannot be compiled: {error}; fix it ({describe})",
    )


def _readable_selector(raw: object) -> selectors.LabelSelector:
    """The selector as written; an unreadable one selects everything (fail closed)."""
    if raw is None:
        return selectors.LabelSelector()
    try:
        return _selector(model.LabelSelector.model_validate(raw))
    except pydantic.ValidationError:
        return selectors.LabelSelector()


def compile_policy(document: model.PolicyDocument) -> engine.CompiledPolicy:
    return compile_spec(document.metadata.name, document.namespace, document.spec)


def compile_spec(name: str, namespace: str | None, spec: model.PolicySpec) -> engine.CompiledPolicy:
    return engine.CompiledPolicy(
        name=name,
        namespace=namespace,
        mode=engine.Mode(spec.mode),
        selector=_selector(spec.namespace_selector),
        pin_digests=spec.pin_digests,
        mutation_scope=engine.MutationScope(spec.mutation.scope),
        sources=tuple(
            engine.CompiledSource(
                source.name,
                tuple(glob.compile_glob(pattern) for pattern in source.images),
                source.signatures,
                source.attestations,
            )
            for source in spec.sources
        ),
        rewrites=_rewrites(spec.rewrites),
        pull_secrets=tuple((ref.namespace, ref.name) for ref in spec.pull_secrets),
    )


def _selector(selector: model.LabelSelector) -> selectors.LabelSelector:
    return selectors.LabelSelector(
        dict(selector.match_labels),
        tuple(
            selectors.Requirement(r.key, r.operator, frozenset(r.values))
            for r in selector.match_expressions
        ),
    )


def _rewrites(rules: tuple[model.Rewrite, ...]) -> tuple[engine.RewriteRule, ...]:
    """From/to rules first, then catalogue rules: what a policy names overrides the catalogue."""
    explicit = [_explicit(rule) for rule in rules if rule.catalog is None]
    catalogued = [
        engine.CatalogRewrite(rule.catalog, bool(rule.allow_latest_only))
        for rule in rules
        if rule.catalog is not None
    ]
    return (*explicit, *catalogued)


def _explicit(rule: model.Rewrite) -> engine.CompiledRewrite:
    if rule.from_ is None or rule.to is None:  # the model refuses this: never reached
        raise model.PolicyError("a rewrite needs from and to, or catalog")
    # `to` is a repository (validated by the model); parse it to split off the registry.
    target = reference.parse(rule.to)
    return engine.CompiledRewrite(
        glob.compile_glob(rule.from_), target.registry, target.repository, rule.tag
    )
