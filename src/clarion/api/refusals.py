"""How the API answers a refusal (:class:`clarion.domain.refusal.Refused`): the error of
each reason, whose class gives the status code, in one table."""

from __future__ import annotations

from clarion.domain.refusal import Reason, Refused
from clarion.errors import ApiError, Conflict, ValidationFailed

ERRORS: dict[Reason, type[ApiError]] = {
    Reason.UNKNOWN_TEMPLATE: ValidationFailed,
    Reason.UNKNOWN_TOPIC: ValidationFailed,
    Reason.UNKNOWN_RECIPIENT: ValidationFailed,
    Reason.UNKNOWN_WORKFLOW: ValidationFailed,
    Reason.UNSTORABLE: ValidationFailed,
    Reason.IDEMPOTENCY_CONFLICT: Conflict,
    Reason.INVALID_POLICY: ValidationFailed,
    Reason.TOO_MANY_SCHEDULES: Conflict,
    Reason.UNKNOWN_LAYOUT: ValidationFailed,
    Reason.LAYOUT_IN_USE: Conflict,
    Reason.TOO_MANY_LAYOUTS: Conflict,
}


def refusal_error(refused: Refused) -> ApiError:
    """The refusal as the error the API answers with: raise it, or answer it
    (:func:`clarion.api.errors.api_error_response`)."""
    return ERRORS[refused.reason](refused.message, code=refused.code, details=refused.details)
