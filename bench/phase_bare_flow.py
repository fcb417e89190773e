"""Child process of bench/scale_bench.py: the reference of a no-op run, a bare Prefect flow
with one task, against the same Prefect API server as deltaferry (``PREFECT_API_URL``).

Prefect's defaults (no cache policy, retries, tags or artifacts set), nothing from
deltaferry imported. Prints one ``BENCH_RESULT {json}`` line (``rows`` is 0).

    PREFECT_API_URL=http://127.0.0.1:PORT/api python bench/phase_bare_flow.py
"""

from __future__ import annotations

import json
import resource
import time


def main() -> None:
    t_import = time.perf_counter()
    from prefect import flow, task

    imported = time.perf_counter() - t_import

    @task
    def one() -> int:
        return 1

    @flow(name="bench-bare-flow")
    def bare() -> int:
        return one()

    t0 = time.perf_counter()
    value = bare()
    work = time.perf_counter() - t0
    result = {
        "rows": 0,
        "value": value,
        "work_s": work,
        "import_s": imported,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print("BENCH_RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
