"""The status the operator writes on a policy (`status:` of both CRDs): the Ready condition,
observedGeneration and the denial counters. The CRD's status schema is generated from it."""

from __future__ import annotations

from typing import Literal

import pydantic

from imagegate.policy.model import Spec


class Condition(Spec):
    """A condition of the policy (metav1.Condition)."""

    type: str = pydantic.Field(min_length=1, max_length=316)
    """The condition's type: Ready."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str = ""
    """A CamelCase word for why (Compiled, InvalidKeptPrevious, InvalidDenying)."""
    message: str = ""
    """What went wrong, naming the field, when the policy is not Ready."""
    last_transition_time: str | None = pydantic.Field(None, alias="lastTransitionTime")
    """When the status last changed (RFC 3339)."""


class LastDenial(Spec):
    """The latest denial this policy made."""

    time: str
    """When (RFC 3339)."""
    namespace: str = ""
    """The namespace of the denied object."""
    object: str = ""
    """The denied object (Kind/name)."""
    image: str = ""
    """The image that was denied."""


class PolicyStatus(Spec):
    """Written by the operator."""

    observed_generation: pydantic.StrictInt | None = pydantic.Field(
        None, alias="observedGeneration", ge=0
    )
    """The generation of the spec the operator last compiled."""
    conditions: tuple[Condition, ...] = pydantic.Field(
        (),
        max_length=8,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    """Ready: whether the spec compiled and is being enforced."""
    denials: pydantic.StrictInt = pydantic.Field(0, ge=0)
    """Denials counted since the policy was created (enforce mode; dry runs not counted)."""
    last_denial: LastDenial | None = pydantic.Field(None, alias="lastDenial")
    """The latest denial."""
