"""The kinds of object ``clarion apply`` manages, in the order it applies them (a template
names a category and a layout, a workflow names templates): each kind's folder, which is
also its path in the API, the fields of its ``PUT`` body, and the body's normal form.

The normal form is what the server keeps of a body: every field, an omitted one at the
API's default. A file's body and the server's active version are compared in it, so that
what the server adds (version, timestamps) or fills in (defaults) is not a difference, and
a field removed from a file is one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True, eq=False)
class Kind:
    """One kind of object: ``noun`` names it in messages, ``folder`` is both its folder in
    DIR and its path (``/v1/<folder>/<key>``), ``named_by`` the field that holds an object's
    key in the API's lists. ``defaults`` holds the optional fields of its body with their
    defaults, ``required`` the others. Only a ``deletable`` kind has a ``DELETE``."""

    noun: str
    folder: str
    named_by: str
    required: tuple[str, ...]
    defaults: Mapping[str, Any]
    max_key: int
    deletable: bool
    shape: Callable[[dict[str, Any]], dict[str, Any]]
    # Optional fields sent at their default when a file omits them: for these, the API
    # reads an omitted field as "unchanged", while the folder means the default.
    stated: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return f"/v1/{self.folder}"

    @property
    def fields(self) -> tuple[str, ...]:
        return (*self.required, *self.defaults)

    def normal(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``body``'s fields of this kind's body, each omitted one at its default."""
        filled = {**self.defaults, **{k: v for k, v in body.items() if k in self.fields}}
        return self.shape(filled)

    def sent(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The ``PUT`` body for a file's ``body``."""
        return {**{k: self.defaults[k] for k in self.stated}, **body}


def _category(body: dict[str, Any]) -> dict[str, Any]:
    # The server keeps each default channel once, and a digest's `key` as null when omitted.
    channels = body["default_channels"]
    if isinstance(channels, list) and all(isinstance(c, str) for c in channels):
        body["default_channels"] = list(dict.fromkeys(channels))
    if isinstance(body["digest"], dict):
        body["digest"] = {"key": None, **body["digest"]}
    if isinstance(body["tracking"], dict):
        body["tracking"] = {"opens": False, "clicks": False, **body["tracking"]}
    return body


def _template(body: dict[str, Any]) -> dict[str, Any]:
    return body


def _workflow(body: dict[str, Any]) -> dict[str, Any]:
    # The server keeps a step's fields that are not null.
    steps = body.get("steps")
    if isinstance(steps, list):
        body["steps"] = [
            {k: v for k, v in step.items() if v is not None} if isinstance(step, dict) else step
            for step in steps
        ]
    return body


CATEGORY = Kind(
    noun="category",
    folder="categories",
    named_by="name",
    required=(),
    defaults={
        "critical": False,
        "default_channels": None,
        "digest": None,
        "max_per_hour": None,
        "max_per_day": None,
        "overflow": "drop",
        "during_snooze": "defer",
        "tracking": {"opens": False, "clicks": False},
    },
    max_key=100,
    deletable=False,
    shape=_category,
)
LAYOUT = Kind(
    noun="layout",
    folder="layouts",
    named_by="name",
    required=("html", "text"),
    # The folder says which layout is the default: one whose file says nothing is not.
    defaults={"locales": {}, "default": False},
    max_key=200,
    deletable=True,
    shape=_template,
    stated=("default",),
)
TEMPLATE = Kind(
    noun="template",
    folder="templates",
    named_by="name",
    required=("channels",),
    defaults={"category": "transactional", "locales": {}, "fallbacks": {}},
    max_key=200,
    deletable=False,
    shape=_template,
)
WORKFLOW = Kind(
    noun="workflow",
    folder="workflows",
    named_by="key",
    required=("name", "steps"),
    defaults={"category": None},
    max_key=200,
    deletable=True,
    shape=_workflow,
)
KINDS = (CATEGORY, LAYOUT, TEMPLATE, WORKFLOW)
