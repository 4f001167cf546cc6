"""The catalogue of hardened equivalents (catalog.yaml, shipped in the package): for a widely used
image, which Chainguard or Docker Hardened Images repository to run instead, and how its tag
carries over. Pure: the file is read once, and mapping a reference is a dictionary lookup and a
few regular expressions.

    >>> map_image("python:3.12-slim", "dhi").image
    ImageReference(registry='dhi.io', repository='python', tag='3.12', digest=None)

Each target has a tag rule: `keep` (the same tag), `map` (a named list of regex → replacement
rules, `3.12-slim` → `3.12`), or `latest-only` (Chainguard's free tier: the version is dropped,
and `Mapped.dropped_version` says which). A digest is always dropped: it named the old image.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
import yaml

from imagegate.core import reference
from imagegate.errors import ImagegateError

CatalogName = Literal["chainguard", "dhi"]
CATALOG_NAMES: tuple[CatalogName, ...] = ("chainguard", "dhi")
TagRuleKind = Literal["keep", "map", "latest-only"]

_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
#: A repository path below a catalogue's prefix (`python`, `dotnet-sdk`).
Name = Annotated[str, pydantic.StringConstraints(pattern=rf"^{_PATH}$", max_length=128)]


class CatalogError(ImagegateError):
    """The shipped catalogue does not validate (a packaging bug, never a user's mistake)."""


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class TagMapping(_Model):
    """One rule of a tag map: when `match` matches the whole tag, the tag becomes `replace`
    (with `\\1`-style groups expanded)."""

    match: str = pydantic.Field(min_length=1, max_length=256)
    replace: str = pydantic.Field(min_length=1, max_length=128)

    @pydantic.field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"regular expression {value!r} does not compile: {error}") from None
        return value

    def apply(self, tag: str) -> str:
        found = _compiled(self.match).fullmatch(tag)
        return tag if found is None else found.expand(self.replace)


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.ASCII)


class TagRule(_Model):
    """How a tag carries over: `keep`, `map` (with the name of a `tagMaps` entry), or
    `latest-only`."""

    rule: TagRuleKind
    map: str | None = None

    @pydantic.model_validator(mode="after")
    def _map_named_for_map_only(self) -> TagRule:
        if (self.rule == "map") != (self.map is not None):
            raise ValueError("name a tag map (map: NAME) exactly when the rule is map")
        return self


class Target(_Model):
    """The equivalent in one catalogue: a repository below its prefix, and its tag rule."""

    name: Name
    #: None: the catalogue's own rule.
    tags: TagRule | None = None
    #: The research notes do not name this target; it follows a naming rule or our reading.
    inferred: bool = False


class Catalogue(_Model):
    """One target catalogue (Chainguard, DHI)."""

    repository: str = pydantic.Field(min_length=1, max_length=128)
    """The registry and path its images live under (`cgr.dev/chainguard`, `dhi.io`)."""
    mirrors: tuple[str, ...] = ()
    """Other places that serve the same images (`docker.io/chainguard`)."""
    tags: TagRule
    """The tag rule of its targets, unless a target says otherwise."""
    description: str = ""


class Catalogues(_Model):
    chainguard: Catalogue
    dhi: Catalogue

    def get(self, name: CatalogName) -> Catalogue:
        return self.chainguard if name == "chainguard" else self.dhi


class Entry(_Model):
    """A source repository and its equivalents."""

    source: str = pydantic.Field(min_length=1, max_length=255)
    """The normalised registry/repository (`docker.io/library/python`)."""
    chainguard: Target | None = None
    dhi: Target | None = None
    note: str = ""

    @pydantic.model_validator(mode="after")
    def _some_target(self) -> Entry:
        if self.chainguard is None and self.dhi is None:
            raise ValueError(f"{self.source}: name a chainguard or dhi target")
        return self

    def target(self, catalog: CatalogName) -> Target | None:
        return self.chainguard if catalog == "chainguard" else self.dhi


class Catalog(_Model):
    """The whole file: catalogues, tag maps, source mirrors and entries."""

    version: Literal[1]
    catalogs: Catalogues
    source_mirrors: dict[str, tuple[str, ...]] = pydantic.Field(
        default_factory=dict, alias="sourceMirrors"
    )
    tag_maps: dict[str, tuple[TagMapping, ...]] = pydantic.Field(
        default_factory=dict, alias="tagMaps"
    )
    images: tuple[Entry, ...] = pydantic.Field(min_length=1)
    _by_source: dict[str, Entry] = pydantic.PrivateAttr(default_factory=dict)

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> Catalog:
        for name in CATALOG_NAMES:
            _check_rule(self.catalogs.get(name).tags, self.tag_maps, name)
        for entry in self.images:
            _check_repository(entry.source, "source")
            for name in CATALOG_NAMES:
                target = entry.target(name)
                if target is None:
                    continue
                _check_repository(f"{self.catalogs.get(name).repository}/{target.name}", name)
                if target.tags is not None:
                    _check_rule(target.tags, self.tag_maps, f"{entry.source} {name}")
            for source in self.sources_of(entry):
                if source in self._by_source:
                    raise ValueError(f"source {source} is listed twice")
                self._by_source[source] = entry
        return self

    def sources_of(self, entry: Entry) -> tuple[str, ...]:
        """The entry's source and its mirrors (`public.ecr.aws/docker/library/python`)."""
        prefix, _, rest = entry.source.rpartition("/")
        mirrors = self.source_mirrors.get(prefix, ())
        return (entry.source, *(f"{mirror}/{rest}" for mirror in mirrors))

    def entry_for(self, name: str) -> Entry | None:
        """The entry for a normalised registry/repository, or None."""
        return self._by_source.get(name)

    def tag_rule(self, entry: Entry, catalog: CatalogName) -> TagRule | None:
        target = entry.target(catalog)
        if target is None:
            return None
        return target.tags or self.catalogs.get(catalog).tags

    def repository(self, entry: Entry, catalog: CatalogName) -> str | None:
        target = entry.target(catalog)
        if target is None:
            return None
        return f"{self.catalogs.get(catalog).repository}/{target.name}"


def _check_repository(text: str, what: str) -> None:
    try:
        parsed = reference.parse(text)
    except reference.InvalidReferenceError as error:
        raise ValueError(f"{what} {text!r}: {error.user_message}") from None
    if parsed.name != text:
        raise ValueError(f"{what} {text!r} is not normalised (it reads as {parsed.name})")


def _check_rule(rule: TagRule, maps: dict[str, tuple[TagMapping, ...]], where: str) -> None:
    if rule.map is not None and rule.map not in maps:
        raise ValueError(f"{where}: tag map {rule.map!r} is not defined under tagMaps")


@functools.cache
def load() -> Catalog:
    """The shipped catalogue, read and validated once."""
    text = importlib.resources.files(__package__).joinpath("catalog.yaml").read_text("utf-8")
    return parse(yaml.safe_load(text))


def parse(data: Any) -> Catalog:
    try:
        return Catalog.model_validate(data)
    except pydantic.ValidationError as error:
        raise CatalogError(f"the image catalogue is invalid: {error}") from error


# -- mapping ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mapped:
    """A reference mapped to a catalogue, and what did not carry over."""

    image: reference.ImageReference
    catalog: CatalogName
    entry: Entry
    rule: TagRuleKind
    #: The original tag, when the target cannot carry its version (latest-only).
    dropped_version: str | None = None
    #: The original digest: it named the old image.
    dropped_digest: str | None = None


def map_image(
    image: reference.ImageReference | str, catalog: CatalogName, within: Catalog | None = None
) -> Mapped | None:
    """The equivalent of `image` in `catalog`, or None when the catalogue knows none.

    `image` is a reference or its text (`python:3.12-slim`; `InvalidReferenceError` when it is
    not one). A tag that maps to something no registry accepts gives None: no rewrite beats a
    broken one.
    """
    source = reference.parse(image) if isinstance(image, str) else image
    known = within or load()
    entry = known.entry_for(source.name)
    if entry is None:
        return None
    repository, rule = known.repository(entry, catalog), known.tag_rule(entry, catalog)
    if repository is None or rule is None:
        return None
    tag, dropped = _tag(source.tag, rule, known)
    if _TAG.fullmatch(tag) is None:
        return None
    target = reference.parse(repository)
    return Mapped(
        reference.ImageReference(target.registry, target.repository, tag, None),
        catalog,
        entry,
        rule.rule,
        dropped,
        source.digest,
    )


def _tag(tag: str | None, rule: TagRule, known: Catalog) -> tuple[str, str | None]:
    """(the new tag, the version dropped or None). A digest-only reference has no tag to keep."""
    if rule.rule == "latest-only":
        return reference.DEFAULT_TAG, tag if tag not in (None, reference.DEFAULT_TAG) else None
    if tag is None:
        return reference.DEFAULT_TAG, None
    if rule.rule == "map" and rule.map is not None:
        for mapping in known.tag_maps[rule.map]:
            tag = mapping.apply(tag)
    return tag, None


def search(text: str = "", catalog: CatalogName | None = None) -> list[Entry]:
    """Entries whose source, mirrors or target names contain `text`, optionally only those with
    a target in `catalog`, in file order."""
    known = load()
    needle = text.lower()
    found = []
    for entry in known.images:
        if catalog is not None and entry.target(catalog) is None:
            continue
        names = [*known.sources_of(entry)]
        names += [t.name for t in (entry.chainguard, entry.dhi) if t is not None]
        if any(needle in name for name in names):
            found.append(entry)
    return found
