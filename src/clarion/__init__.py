"""Clarion: a self-hosted, multi-channel notification platform."""

import sys

# The one source of the version: the package's build metadata reads it from here.
__version__ = "0.1.0"

if sys.version_info < (3, 11):  # noqa: UP036 - the check is the point: a clear message
    raise ImportError(
        "Clarion needs Python 3.11 or newer; this is Python "
        + ".".join(str(part) for part in sys.version_info[:3])
    )
