"""``drifttrio.asgi:app``: the ASGI app configured from ``DRIFTTRIO_*`` variables.

hypercorn -k trio drifttrio.asgi:app
"""

from __future__ import annotations

from .runtime.config import Config
from .web.app import DriftApp

__all__ = ["app"]

app = DriftApp(Config.from_env())
