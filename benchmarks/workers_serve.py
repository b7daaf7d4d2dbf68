"""``drifttrio serve`` for the ``--workers`` rows, with trio's idle threads kept.

    python benchmarks/workers_serve.py serve --port 0 --store memory --workers 2

The same as ``python -m drifttrio.cli serve ...`` except for one benchmark-side
workaround (commit cf9a489): the supervisor starts each worker with
``trio.lowlevel.open_process``, which runs ``subprocess.Popen`` in one of trio's
cached threads, and the worker asks for SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``). Linux sends that signal when the *thread* that forked the
worker exits, and trio's thread cache lets an idle thread exit after 10 s: so
about 10 s after they start, every worker is sent SIGTERM, drains (its clients
are closed) and is started again, over and over. Here the cached threads never
exit (``IDLE_TIMEOUT``), so the workers live as long as the supervisor, as they
are meant to. ``BENCH_WORKERS_AS_IS=1`` runs without the workaround. Drop this
file (the rows become ``drifttrio serve --workers N``) once the server no longer
needs it.
"""

from __future__ import annotations

import os
import sys
import threading

if os.environ.get("BENCH_WORKERS_AS_IS") != "1":
    import trio._core._thread_cache as thread_cache

    thread_cache.IDLE_TIMEOUT = min(threading.TIMEOUT_MAX, 1e6)  # type: ignore[assignment]

from drifttrio.cli import main

if __name__ == "__main__":
    sys.exit(main())
