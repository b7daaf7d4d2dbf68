"""``drifttrio.asgi:app``: the ASGI app configured from ``DRIFTTRIO_*`` variables.

Rooms are stored in ``./drifttrio.db`` (SQLite) unless ``DRIFTTRIO_STORE`` is set.

hypercorn -k trio drifttrio.asgi:app
"""

from __future__ import annotations

import os

from .runtime.config import Config
from .web.app import DriftApp

__all__ = ["app"]

#: Rooms go to ./drifttrio.db unless DRIFTTRIO_STORE says otherwise.
app = DriftApp(Config.from_env(store=os.environ.get("DRIFTTRIO_STORE") or "sqlite:///drifttrio.db"))
