"""A refusal: what the store or the pipeline answers, as a value, when it will not do what
it was asked for a reason the caller can act on.

It names the reason, says it in words, and may carry details (the unknown recipients, a
limit). It knows nothing of HTTP: the API maps each reason to its status code and error
body in one table (``api/refusals.py``); the scheduler records it on a failed run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """Why; the value is the ``code`` the API's error body shows."""

    # A notification naming what its tenant does not have.
    UNKNOWN_TEMPLATE = "unknown_template"
    UNKNOWN_TOPIC = "unknown_topic"
    UNKNOWN_RECIPIENT = "unknown_recipient"
    UNKNOWN_WORKFLOW = "unknown_workflow"
    # A notification no database accepts (a value it cannot encode).
    UNSTORABLE = "unstorable"
    # An idempotency key used with another request, or by one still running.
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    # A policy the category cannot have (``security`` not critical).
    INVALID_POLICY = "validation_error"
    # A new schedule past the tenant's cap.
    TOO_MANY_SCHEDULES = "too_many_schedules"
    # A template naming a layout its tenant does not have; a layout still named (by a
    # template's active version, or as the tenant's default); a new layout past the cap.
    UNKNOWN_LAYOUT = "unknown_layout"
    LAYOUT_IN_USE = "layout_in_use"
    TOO_MANY_LAYOUTS = "too_many_layouts"


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Reason
    message: str
    details: list[Any] = field(default_factory=list)

    @property
    def code(self) -> str:
        return self.reason.value
