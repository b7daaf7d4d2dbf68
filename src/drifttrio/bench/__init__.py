"""``drifttrio bench``: a load generator for any DriftDB server.

    results = await run_bench(BenchOptions(url="http://127.0.0.1:8080", scenarios=("fanout",)))

Scenarios (see docs/bench.md): ``fanout``, ``writers``, ``rooms``, ``replay``,
``churn``, ``ping``. Each result has the delivered rate, latency percentiles, and
what the seq check found (lost, reordered, duplicated), with ``ok`` false when
anything went wrong.
"""

from ._errors import BenchError as BenchError
from ._errors import ConnectionLost as ConnectionLost
from ._model import DEFAULT_SCENARIOS as DEFAULT_SCENARIOS
from ._model import SCENARIOS as SCENARIOS
from ._model import BenchOptions as BenchOptions
from ._model import ScenarioResult as ScenarioResult
from ._model import ServerUsage as ServerUsage
from ._report import format_table as format_table
from ._report import to_json as to_json
from ._runner import run_bench as run_bench
from ._stats import LatencyHistogram as LatencyHistogram
from ._stats import SeqVerifier as SeqVerifier

__all__ = [
    "DEFAULT_SCENARIOS",
    "SCENARIOS",
    "BenchError",
    "BenchOptions",
    "ConnectionLost",
    "LatencyHistogram",
    "ScenarioResult",
    "SeqVerifier",
    "ServerUsage",
    "format_table",
    "run_bench",
    "to_json",
]
