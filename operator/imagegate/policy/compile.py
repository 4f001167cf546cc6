"""Policy resources → the engine's compiled policies (globs compiled, selectors built)."""

from __future__ import annotations

from imagegate import reference
from imagegate.policy import engine, glob, model, selectors


def compile_policy(document: model.PolicyDocument) -> engine.CompiledPolicy:
    return compile_spec(document.metadata.name, document.namespace, document.spec)


def compile_spec(name: str, namespace: str | None, spec: model.PolicySpec) -> engine.CompiledPolicy:
    return engine.CompiledPolicy(
        name=name,
        namespace=namespace,
        mode=engine.Mode(spec.mode),
        selector=_selector(spec.namespace_selector),
        pin_digests=spec.pin_digests,
        sources=tuple(
            engine.CompiledSource(
                source.name,
                tuple(glob.compile_glob(pattern) for pattern in source.images),
                source.signatures,
            )
            for source in spec.sources
        ),
        rewrites=tuple(_rewrite(rule) for rule in spec.rewrites),
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


def _rewrite(rule: model.Rewrite) -> engine.CompiledRewrite:
    # `to` is a repository (validated by the model); parse it to split off the registry.
    target = reference.parse(rule.to)
    return engine.CompiledRewrite(
        glob.compile_glob(rule.from_), target.registry, target.repository, rule.tag
    )
