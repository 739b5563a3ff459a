"""Provider classes by kind (``providers/kinds.py``), imported on first use: a process loads
only the protocols its tenants configure, and a kind's heavy dependencies stay optional."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from clarion.errors import PermanentError
from clarion.providers.base import Provider, ProviderEnv, ProviderSpec
from clarion.providers.kinds import KINDS, import_target

Factory = Callable[[ProviderSpec, ProviderEnv], Provider]


def load(kind: str) -> Factory:
    """The class of ``kind``. ``KeyError`` for a kind that does not exist; ``PermanentError``
    for one this installation cannot load."""
    target = KINDS[kind].provider
    if target is None:
        raise KeyError(f"{kind!r} is a built-in kind")
    cls = import_target(target)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise PermanentError(f"{target} is not a provider", reason="no_provider")
    return cast(Factory, cls)
