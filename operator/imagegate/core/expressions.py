"""CEL expressions from policies, over what a verified attestation says (design.md §9).

CEL is Kubernetes' own policy language (CRD validation rules, ValidatingAdmissionPolicy), so an
admin already knows it. cel-python (PyPI `cel-python`, the Cloud Custodian project's pure-Python
implementation of the CEL spec) is used: maintained, no native code to build, and typed. An
expression is compiled when the policy is validated (a bad one is refused with the parser's
reason) and evaluated only over predicates whose signature has already been verified.

celpy is imported on first use: it takes most of a second, which every command would pay.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from imagegate.errors import ImagegateError

MAX_LENGTH = 4096


class ExpressionError(ImagegateError):
    """An expression that does not compile, or does not hold; the message says why."""


@functools.lru_cache(maxsize=256)
def _program(expression: str) -> Any:
    import celpy
    from celpy import celparser, evaluation

    environment = celpy.Environment()
    try:
        return environment.program(environment.compile(expression))
    except (celparser.CELParseError, evaluation.CELSyntaxError) as error:
        first = str(error).splitlines()[0][:200]
        raise ExpressionError(f"{expression!r} is not a CEL expression: {first}") from None


def check(expression: str) -> str:
    """`expression` itself, or `ExpressionError` when it does not compile."""
    _program(expression)
    return expression


def holds(expression: str, variables: Mapping[str, Any]) -> None:
    """Returns when `expression` evaluates to true over `variables` (JSON values); raises
    ExpressionError saying what it evaluated to, or why it could not be evaluated."""
    from celpy import adapter, celtypes, evaluation

    program = _program(expression)
    activation = {name: adapter.json_to_cel(value) for name, value in variables.items()}
    try:
        result = program.evaluate(activation)
    except evaluation.CELEvalError as error:
        reason = error.args[0] if error.args else error
        raise ExpressionError(f"{expression} cannot be evaluated ({reason})") from None
    except (TypeError, ValueError, KeyError, RecursionError) as error:
        raise ExpressionError(f"{expression} cannot be evaluated ({error})") from None
    if not isinstance(result, celtypes.BoolType):
        raise ExpressionError(f"{expression} is {str(result)[:100]}, policy wants true")
    if not bool(result):
        raise ExpressionError(f"{expression} is false, policy wants true")
