"""randla benchmarks: asv suites (``bench_*.py``) and comparison scripts (``compare*.py``).

``RANDLA_BENCH_SMALL=1`` runs every asv benchmark on small sizes: CI sets it and runs
``asv run --python=same --quick`` so that no benchmark can rot, in minutes rather
than the hour the full sizes take on two cores.
"""

import os

SMALL = os.environ.get("RANDLA_BENCH_SMALL") == "1"


def sizes(full, small):
    """``full`` normally, ``small`` under ``RANDLA_BENCH_SMALL=1``."""
    return small if SMALL else full
