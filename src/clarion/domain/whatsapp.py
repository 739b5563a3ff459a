"""The WhatsApp channel: a template's ``whatsapp`` part, and the messages made from it.

Outside the 24-hour customer-service window (opened by the person's last message to the
business) WhatsApp delivers only **template messages**, pre-approved by Meta. A part names
its template and how to fill it; every string is a template of Clarion's own, rendered from
the notification's data::

    {"template": "order_shipped",                 Meta's template name
     "language": "en_US",                         its language, as approved
     "header": {"type": "image", "link": "https://cdn.example/{{ orderId }}.png"},
     "body": ["{{ firstName }}", "{{ orderId }}"],   or named: {"first_name": "..."}
     "buttons": [{"index": 0, "url": "{{ orderId }}"}],   a URL button's suffix, or
                                                          {"index": 1, "payload": "..."}
     "content_sid": "HX...",                      Twilio's Content API template
     "content_variables": {"1": "..."},           Twilio's variables (default: from body)
     "text": "Your order {{ orderId }} shipped"}  free-form text

``components`` may replace ``header``/``body``/``buttons`` with Meta's own components
array. Free-form ``text`` is sent only by a provider for which the part has no template
(Meta: no ``template``; Twilio: no ``content_sid``): Clarion does not track the window, so
a text outside it fails with ``outside_window``. Checked when the template is stored
(:func:`part_problems`); the providers build their requests with :func:`meta_message` and
:func:`twilio_template`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# A template's name as Meta allows it; its language code (en, en_US, zh_CN, pt_BR, ...).
TEMPLATE_NAME = re.compile(r"^[a-z0-9_]{1,512}$")
LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Z][A-Za-z]{1,3})?$")
# A Twilio Content API template's SID.
CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")
PARAMETER_NAME = re.compile(r"^[a-z0-9_]{1,100}$")
MEDIA = ("image", "video", "document")
PART_FIELDS = frozenset(
    {
        "template",
        "language",
        "header",
        "body",
        "buttons",
        "components",
        "content_sid",
        "content_variables",
        "text",
        "preview_url",
    }
)
MAX_PARAMETERS = 100
MAX_BUTTONS = 10
MAX_COMPONENTS = 20

Problems = list[dict[str, str]]


def _problem(field: str, message: str) -> Problems:
    return [{"field": field, "message": message}]


def part_problems(part: Any, where: str) -> Problems:
    """What is wrong with a WhatsApp part of a template (``where`` prefixes each field), as
    validation details; [] when it is fine."""
    if not isinstance(part, Mapping):
        return _problem(where, "an object with a template (and language) or text")
    problems: Problems = []
    for name in sorted(set(part) - PART_FIELDS - {"digest"}, key=str):
        problems += _problem(f"{where}.{name}", "not a field of a WhatsApp part")
    template, sid, text = part.get("template"), part.get("content_sid"), part.get("text")
    if template is None and sid is None and text is None:
        problems += _problem(where, "a template, a content_sid or a text is required")
    problems += _template_problems(part, where)
    if sid is not None and not (isinstance(sid, str) and CONTENT_SID.match(sid)):
        problems += _problem(f"{where}.content_sid", "a Twilio Content SID (HX + 32 hex)")
    if text is not None and not (isinstance(text, str) and text.strip()):
        problems += _problem(f"{where}.text", "a non-empty text")
    if "preview_url" in part and not isinstance(part["preview_url"], bool):
        problems += _problem(f"{where}.preview_url", "true or false")
    variables = part.get("content_variables")
    if variables is not None and not _strings_by_name(variables, r"^[A-Za-z0-9_]{1,100}$"):
        problems += _problem(f"{where}.content_variables", "an object of strings")
    if "digest" in part:
        problems += part_problems(part["digest"], f"{where}.digest")
    return problems


def _template_problems(part: Mapping[str, Any], where: str) -> Problems:
    template, language = part.get("template"), part.get("language")
    problems: Problems = []
    if template is not None and not (isinstance(template, str) and TEMPLATE_NAME.match(template)):
        problems += _problem(f"{where}.template", "a template name (a-z, 0-9 and _)")
    if template is not None and language is None:
        problems += _problem(f"{where}.language", "required with a template (e.g. en_US)")
    if language is not None and not (isinstance(language, str) and LANGUAGE.match(language)):
        problems += _problem(f"{where}.language", "a language code such as en or en_US")
    shorthand = [name for name in ("header", "body", "buttons") if name in part]
    if "components" in part and shorthand:
        problems += _problem(f"{where}.components", f"given with {', '.join(shorthand)}")
    if "header" in part:
        problems += _header_problems(part["header"], f"{where}.header")
    if "body" in part:
        problems += _body_problems(part["body"], f"{where}.body")
    if "buttons" in part:
        problems += _buttons_problems(part["buttons"], f"{where}.buttons")
    if "components" in part:
        problems += _components_problems(part["components"], f"{where}.components")
    return problems


def _header_problems(header: Any, where: str) -> Problems:
    if not isinstance(header, Mapping):
        return _problem(where, 'an object: {"type": "text", "text"} or {"type": "image", "link"}')
    kind = header.get("type")
    if kind == "text":
        allowed, required = {"type", "text"}, "text"
    elif kind in MEDIA:
        allowed = {"type", "link", "filename"} if kind == "document" else {"type", "link"}
        required = "link"
    else:
        return _problem(f"{where}.type", "text, image, video or document")
    problems: Problems = []
    for name in sorted(set(header) - allowed, key=str):
        problems += _problem(f"{where}.{name}", f"not a field of a {kind} header")
    for name in sorted(set(header) & (allowed - {"type"})):
        if not _text(header[name]):
            problems += _problem(f"{where}.{name}", "a non-empty string")
    if required not in header:
        problems += _problem(f"{where}.{required}", "required")
    return problems


def _body_problems(body: Any, where: str) -> Problems:
    if isinstance(body, list):
        if len(body) > MAX_PARAMETERS:
            return _problem(where, f"at most {MAX_PARAMETERS} parameters")
        bad = [i for i, value in enumerate(body) if not _text(value)]
        return [{"field": f"{where}.{i}", "message": "a non-empty string"} for i in bad]
    if isinstance(body, Mapping) and len(body) <= MAX_PARAMETERS:
        if _strings_by_name(body, PARAMETER_NAME.pattern):
            return []
        return _problem(where, "parameter names (a-z, 0-9, _) to non-empty strings")
    return _problem(where, "a list of parameters, or an object of named parameters")


def _buttons_problems(buttons: Any, where: str) -> Problems:
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= MAX_BUTTONS:
        return _problem(where, f"a list of 1 to {MAX_BUTTONS} buttons")
    problems: Problems = []
    for i, button in enumerate(buttons):
        at = f"{where}.{i}"
        if not isinstance(button, Mapping):
            problems += _problem(at, 'an object: {"index", "url"} or {"index", "payload"}')
            continue
        index = button.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_BUTTONS:
            problems += _problem(f"{at}.index", f"the button's position, 0 to {MAX_BUTTONS - 1}")
        given = set(button) - {"index"}
        if given not in ({"url"}, {"payload"}):
            problems += _problem(at, "a url (the URL's suffix) or a payload, one of them")
        elif not _text(button.get("url", button.get("payload"))):
            problems += _problem(f"{at}.{given.pop()}", "a non-empty string")
    return problems


def _components_problems(components: Any, where: str) -> Problems:
    if not isinstance(components, list) or len(components) > MAX_COMPONENTS:
        return _problem(where, f"a list of at most {MAX_COMPONENTS} components")
    problems: Problems = []
    for i, component in enumerate(components):
        if not isinstance(component, Mapping) or not _text(component.get("type")):
            problems += _problem(f"{where}.{i}", "a component object with its type")
    return problems


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _strings_by_name(value: Any, pattern: str) -> bool:
    names = re.compile(pattern)
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and names.match(k) and _text(v) for k, v in value.items()
    )


class PartError(ValueError):
    """A rendered part that cannot make a message (the provider's ``render_error``)."""


def meta_message(to: str, part: Mapping[str, Any]) -> dict[str, Any]:
    """The Cloud API's message object for a rendered part: a template message when the
    part names a template, else a text message."""
    base: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual"}
    base["to"] = to
    template = part.get("template")
    if isinstance(template, str) and template:
        language = part.get("language")
        body: dict[str, Any] = {"name": template, "language": {"code": language}}
        components = _components(part)
        if components:
            body["components"] = components
        return {**base, "type": "template", "template": body}
    text = part.get("text")
    if not _text(text):
        raise PartError("the WhatsApp part has no template and no text")
    message = {"body": text, "preview_url": bool(part.get("preview_url", False))}
    return {**base, "type": "text", "text": message}


def _components(part: Mapping[str, Any]) -> list[Any]:
    if "components" in part:
        return list(part["components"])
    components: list[dict[str, Any]] = []
    header = part.get("header")
    if isinstance(header, Mapping):
        components.append({"type": "header", "parameters": [_header_parameter(header)]})
    body = part.get("body")
    if isinstance(body, list) and body:
        parameters = [{"type": "text", "text": _rendered(v, "body")} for v in body]
        components.append({"type": "body", "parameters": parameters})
    elif isinstance(body, Mapping) and body:
        parameters = [
            {"type": "text", "parameter_name": name, "text": _rendered(value, f"body.{name}")}
            for name, value in body.items()
        ]
        components.append({"type": "body", "parameters": parameters})
    for button in part.get("buttons") or ():
        components.append(_button(button))
    return components


def _header_parameter(header: Mapping[str, Any]) -> dict[str, Any]:
    kind = header.get("type")
    if kind == "text":
        return {"type": "text", "text": _rendered(header.get("text"), "header.text")}
    link = _rendered(header.get("link"), "header.link")
    if not link.startswith("https://"):
        raise PartError(f"the header's {kind} link is not an https URL")
    media: dict[str, Any] = {"link": link}
    if kind == "document" and _text(header.get("filename")):
        media["filename"] = header["filename"]
    return {"type": kind, str(kind): media}


def _button(button: Mapping[str, Any]) -> dict[str, Any]:
    index = str(button.get("index"))
    if "url" in button:
        suffix = _rendered(button["url"], f"buttons.{index}.url")
        return {
            "type": "button",
            "sub_type": "url",
            "index": index,
            "parameters": [{"type": "text", "text": suffix}],
        }
    payload = _rendered(button.get("payload"), f"buttons.{index}.payload")
    return {
        "type": "button",
        "sub_type": "quick_reply",
        "index": index,
        "parameters": [{"type": "payload", "payload": payload}],
    }


def _rendered(value: Any, field: str) -> str:
    """A parameter's rendered text: WhatsApp refuses an empty one, so it is caught here."""
    if not _text(value):
        raise PartError(f"the WhatsApp parameter {field} rendered empty")
    return str(value)


def twilio_template(part: Mapping[str, Any]) -> tuple[str, dict[str, str]] | None:
    """A rendered part's Twilio Content template: its SID and variables (the part's
    ``content_variables``, else its ``body``: a list numbered from "1", or named); None
    when the part names no ``content_sid``."""
    sid = part.get("content_sid")
    if not isinstance(sid, str) or not sid:
        return None
    variables = part.get("content_variables")
    if isinstance(variables, Mapping):
        return sid, {str(k): _rendered(v, f"content_variables.{k}") for k, v in variables.items()}
    body = part.get("body")
    if isinstance(body, list):
        return sid, {str(i): _rendered(v, f"body.{i - 1}") for i, v in enumerate(body, 1)}
    if isinstance(body, Mapping):
        return sid, {str(k): _rendered(v, f"body.{k}") for k, v in body.items()}
    return sid, {}
