"""``drifttrio.asgi:app``: the ASGI app configured from ``DRIFTTRIO_*`` variables.

Rooms are stored in ``./drifttrio.db`` (SQLite) unless ``DRIFTTRIO_STORE`` is set.

    hypercorn -k trio drifttrio.asgi:app

A mistake a user can fix (a bad setting, a store that cannot be opened, hypercorn's
asyncio worker) ends the worker with one line on stderr, ``drifttrio: ...``, and
exit status 2, instead of a traceback: a bad setting when hypercorn imports this
module (``SystemExit``), the rest at lifespan startup. There an exception would
reach hypercorn, which prints its traceback; so the process ends itself
(``os._exit``: nothing has been served yet, and nothing of it needs cleaning up).
hypercorn 0.18 itself then exits 0 whatever its worker's status (its final
cleanup overwrites it: pgjones/hypercorn#269, #372) unless run with ``-w 0``
(see docs/quickstart.md).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

from ._errors import ConfigError
from .cli import DEFAULT_STORE
from .runtime.config import Config, warn_unknown_variables
from .web.app import DriftApp

__all__ = ["app"]


def _fail(reason: str) -> NoReturn:
    """Say why in one line and end the worker with status 2, without a traceback."""
    print(f"drifttrio: {reason}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(2)


def _config() -> Config:
    try:
        config = Config.from_env(store=os.environ.get("DRIFTTRIO_STORE") or DEFAULT_STORE)
    except ConfigError as exc:
        print(f"drifttrio: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    warn_unknown_variables()  # a misspelled DRIFTTRIO_ name: one warning line
    return config


app = DriftApp(_config(), startup_failed=_fail)
