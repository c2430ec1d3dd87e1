"""`make fuzz`: the schemathesis run of tests/server/test_fuzz_e2e.py with many more examples, against a
server of its own, printing its figures.

    python -m tests.fuzz [--examples N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.fuzz.runner import fuzz
from tests.live_server import serve


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz")
    parser.add_argument("--examples", type=int, default=50, help="generated cases per operation and mode")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp), {"api": {"rate_limit_per_minute": 0}}) as server:
        start = time.monotonic()
        report = fuzz(server.url, args.examples)
        took = time.monotonic() - start
    statuses = ", ".join(f"{status}: {n}" for status, n in sorted(report.statuses.items()))
    print(f"operations: {report.operations}, examples per operation and mode: {args.examples}")
    print(f"requests: {report.requests} in {took:.0f} s; answers by status: {statuses}")
    print(f"server errors (5xx): {report.server_errors}; check failures: {len(report.failures)}")
    for failure in report.failures[:20]:
        print("\n" + failure)
    return 1 if report.failures or report.server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
