"""Email addresses and phone numbers: checked with the libraries made for them, and kept in
one normal form, so that the API accepts exactly what the providers can send to."""

from __future__ import annotations

import contextlib

import phonenumbers
from email_validator import EmailNotValidError, validate_email

MAX_EMAIL = 254


def normal_email(value: str) -> str:
    """The address in normal form; ``ValueError`` saying why it is not one.

    Mailbox names must be ASCII: a non-ASCII one needs SMTPUTF8 end to end, which the email
    providers do not offer. An international domain is fine."""
    if len(value) > MAX_EMAIL:
        raise ValueError(f"not an email address (longer than {MAX_EMAIL} characters)")
    try:
        checked = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not an email address: {exc}") from exc
    return str(checked.normalized)


def normal_phone(value: str) -> str:
    """The number in E.164 form; ``ValueError`` unless it has a known country code and a
    length possible for that country (``+14155550100``). Numbering plans change faster than
    any library's copy of them, so a number is not refused for its range."""
    if not value.startswith("+") or len(value) > 32:
        raise ValueError("not a phone number in E.164 form (e.g. +14155550100)")
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a phone number: {exc}") from exc
    if not phonenumbers.is_possible_number(number):
        raise ValueError("not a phone number: the wrong length for its country code")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def suppression_key(value: str) -> str:
    """The form an email address takes on a suppression list, and is looked up in: trimmed
    and lower-cased whole, the domain in its ASCII (IDNA) form.

    The local part is lower-cased too, although RFC 5321 lets a server tell ``Alex@`` from
    ``alex@``: no mailbox provider of note does, bounce reports do not keep the case the
    message was sent with, and a list that errs makes Clarion skip a mailbox rather than
    mail one that bounced. Cheap (no parsing): the worker computes it for every email it
    is about to send."""
    local, at, domain = value.strip().rpartition("@")
    if not at:
        return value.strip().lower()
    if not domain.isascii():
        # A domain IDNA cannot encode is kept as written: it can only match the same text.
        with contextlib.suppress(UnicodeError):
            domain = domain.encode("idna").decode("ascii")
    return f"{local.lower()}@{domain.lower()}"
