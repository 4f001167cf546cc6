"""Policy problems as users read them: pydantic's `ValidationError` turned into lines that name
the field (`spec.sources[0].images[1]: glob 'X' has uppercase letters`).

A model validator that knows which field is wrong raises `Problem(message, at=path)`; the path
is appended to pydantic's location, so the message names the field, not the model.
"""

from __future__ import annotations

import pydantic
from pydantic_core import ErrorDetails


class Problem(ValueError):
    """A validation problem at `at`, a path below the model that raised it."""

    def __init__(self, message: str, *, at: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.at = at


def format_validation_error(error: pydantic.ValidationError, *, prefix: str = "") -> str:
    """`spec.sources[0].images[1]: glob 'X' ...` for the first problem, and how many more."""
    found = of(error, prefix=prefix)
    text = found[0]
    if len(found) > 1:
        text += f" (and {len(found) - 1} more problem{'s' if len(found) > 2 else ''})"
    return text


def of(error: pydantic.ValidationError, *, prefix: str = "") -> list[str]:
    """Every problem in `error`, each as `field.path: what is wrong`."""
    found = []
    errors = error.errors(include_url=False)
    for problem in errors:
        location: tuple[int | str, ...] = tuple(problem["loc"])
        if problem["type"] == "too_short" and any(
            len(other["loc"]) > len(location) and other["loc"][: len(location)] == location
            for other in errors
        ):
            continue  # pydantic counts a list's items after dropping the bad ones: noise
        cause = (problem.get("ctx") or {}).get("error")
        if isinstance(cause, Problem):
            location += cause.at
        if prefix:
            location = (prefix, *location)
        found.append(f"{_field_path(location)}: {_message(problem, cause)}")
    return found


_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "required field is missing",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
}
_COUNTED = {
    "too_short": "needs at least {min_length} item{s}",
    "too_long": "has more than {max_length} item{s}",
}


def _message(problem: ErrorDetails, cause: object) -> str:
    if isinstance(cause, ValueError):
        return str(cause)
    kind = problem["type"]
    message = _MESSAGES.get(kind, str(problem["msg"]))
    if kind in _COUNTED:
        ctx = problem.get("ctx") or {}
        limit = ctx.get("min_length", ctx.get("max_length"))
        return _COUNTED[kind].format(**ctx, s="" if limit == 1 else "s")
    if kind in ("extra_forbidden", "missing"):
        return message
    value = problem.get("input")
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        message += f" (got {shown!r})"
    elif isinstance(value, bool | int | float) or value is None:
        message += f" (got {value!r}"
        message += "; quote it in YAML)" if kind == "string_type" else ")"
    return message


def _field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    previous: int | str | None = None
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "[key]":
            continue  # a bad mapping key: the part before it names the key
        elif previous == "matchLabels":
            path += f'["{part}"]'
        elif "[" in part:
            continue  # pydantic's own steps (`function-after[...]`), not fields
        else:
            path += ("." if path else "") + part
        previous = part
    return path or "(document)"
