"""Values stored now that travel later in a protocol header, a request line or as an
address (a provider's ``from``, a key id in an ``Authorization`` header, an APNs topic):
checked once, when they are stored, by the same rules for every provider kind, so a value
that would break (or inject into) every later send is a 422 naming the field instead.

No value may hold a control character (Unicode category Cc: C0, DEL, C1 including NEL
U+0085) or a line or paragraph separator (U+2028, U+2029): each ends a header line for one
reader or another (Python's ``str.splitlines`` breaks on all of them). Addresses are also
checked for their form.
"""

from __future__ import annotations

import re
from email.utils import getaddresses, parseaddr

# Every control character and every line boundary some reader honours.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# An ASCII mailbox as every email provider takes it: local@domain.tld, no spaces or
# specials (an international domain in its IDNA form, or as Unicode letters).
_PART = r"[^@\s<>()\[\],;:\"\\.]+"
_MAILBOX = re.compile(rf"^{_PART}(\.{_PART})*@{_PART}(\.{_PART})+$")
# An SMS sender: an E.164 number, a short code, an alphanumeric sender id (1-11 letters,
# digits and spaces, at least one letter) or a messaging service's SID.
_SMS_SENDER = re.compile(
    r"^(\+[1-9]\d{1,14}|\d{3,8}|(?=[A-Za-z0-9 ]*[A-Za-z])[A-Za-z0-9 ]{1,11}|MG[0-9a-fA-F]{32})$"
)


def header_value(value: str) -> str:
    """``value`` unchanged; ``ValueError`` naming the first character that a header, a
    request line or an address may not hold."""
    found = _FORBIDDEN.search(value)
    if found is not None:
        raise ValueError(
            f"holds the control character U+{ord(found.group()):04X}, which may not appear "
            "in a value sent in a header or as an address"
        )
    return value


def mailbox(value: str) -> str:
    """An email sender as written: ``name@example.com`` or ``Name <name@example.com>``,
    one mailbox with an ASCII local part; ``ValueError`` saying why not."""
    header_value(value)
    shape = "(`name@example.com` or `Name <name@example.com>`)"
    if "=?" in value:
        # A mail reader decodes RFC 2047 encoded words, whatever they hide (CR, LF).
        raise ValueError(f"holds an RFC 2047 encoded word; write the name as it is {shape}")
    if len(getaddresses([value])) != 1:
        raise ValueError(f"not one email address {shape}")
    address = parseaddr(value)[1]
    if not _MAILBOX.match(address) or not address.split("@", 1)[0].isascii():
        raise ValueError(f"not an email address {shape}")
    return value


def sms_sender(value: str) -> str:
    """An SMS ``from``: an E.164 number, a short code, an alphanumeric sender id or a
    messaging service SID; ``ValueError`` otherwise."""
    header_value(value)
    if not _SMS_SENDER.match(value):
        raise ValueError(
            "not an SMS sender: an E.164 number (+14155550100), a short code, an "
            "alphanumeric sender id (1-11 letters, digits and spaces) or a messaging "
            "service SID (MG...)"
        )
    return value
