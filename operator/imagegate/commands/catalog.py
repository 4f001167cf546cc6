"""`imagegate catalog`: the shipped catalogue of hardened equivalents, listed and searched.

    imagegate catalog python              # what python maps to, in both catalogues
    imagegate catalog --target dhi -o json

Rows are plain data (`Row`), so the table and `-o json` print the same thing.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

import pydantic

from imagegate.policy import catalog


class Row(pydantic.BaseModel):
    """One entry: a source, its mirrors, and its equivalent in each catalogue."""

    source: str
    mirrors: list[str]
    chainguard: str | None
    chainguard_tags: str | None = pydantic.Field(serialization_alias="chainguardTags")
    dhi: str | None
    dhi_tags: str | None = pydantic.Field(serialization_alias="dhiTags")
    #: Catalogues whose target the research notes do not name (check before enforcing).
    inferred: list[str]
    note: str


def rows(search: str = "", target: catalog.CatalogName | None = None) -> list[Row]:
    known = catalog.load()
    found = []
    for entry in catalog.search(search, target):
        repositories = {name: known.repository(entry, name) for name in catalog.CATALOG_NAMES}
        tags = {name: _tag_rule(known, entry, name) for name in catalog.CATALOG_NAMES}
        inferred: list[str] = [
            name
            for name in catalog.CATALOG_NAMES
            if (chosen := entry.target(name)) is not None and chosen.inferred
        ]
        found.append(
            Row(
                source=entry.source,
                mirrors=list(known.sources_of(entry)[1:]),
                chainguard=repositories["chainguard"],
                chainguard_tags=tags["chainguard"],
                dhi=repositories["dhi"],
                dhi_tags=tags["dhi"],
                inferred=inferred,
                note=entry.note,
            )
        )
    return found


def _tag_rule(
    known: catalog.Catalog, entry: catalog.Entry, name: catalog.CatalogName
) -> str | None:
    rule = known.tag_rule(entry, name)
    if rule is None:
        return None
    return f"map:{rule.map}" if rule.rule == "map" else rule.rule


def render_table(found: list[Row], target: catalog.CatalogName | None) -> str:
    shown = [target] if target else list(catalog.CATALOG_NAMES)
    header = ["SOURCE", *(f"{name.upper()} (TAGS)" for name in shown)]
    table = [header]
    for row in found:
        cells = [row.source]
        for name in shown:
            repository = row.chainguard if name == "chainguard" else row.dhi
            tags = row.chainguard_tags if name == "chainguard" else row.dhi_tags
            mark = " *" if name in row.inferred else ""
            cells.append(f"{repository} ({tags}){mark}" if repository else "-")
        table.append(cells)
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table
    ]
    lines.append(f"{len(found)} entries; * inferred, not named by the research notes: check first")
    return "\n".join(lines) + "\n"


def run(
    search: str = "",
    *,
    target: catalog.CatalogName | None = None,
    output: str = "table",
    out: TextIO | None = None,
) -> int:
    """Print the matching entries; exit status 1 when nothing matches."""
    stream = out or sys.stdout
    found = rows(search, target)
    if output == "json":
        payload = [row.model_dump(by_alias=True) for row in found]
        stream.write(json.dumps(payload, indent=2) + "\n")
    else:
        stream.write(render_table(found, target))
    return 0 if found else 1
