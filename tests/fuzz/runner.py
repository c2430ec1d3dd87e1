"""schemathesis over the published OpenAPI document of a running server: `examples` generated cases per
operation and mode (valid, then invalid requests), each checked for a server error and against the
document (status code, media type, body schema).

schemathesis' pytest plugin does not run under pytest 9 here (it reads a removed `_nodeid`), so the
operations are driven through its Python API: one hypothesis strategy per operation and mode.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from tests.fuzz.hooks import SKIPPED

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@dataclass
class FuzzReport:
    operations: int = 0
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


def _run(operation: schemathesis.APIOperation, mode: GenerationMode, base_url: str, examples: int,
         report: FuzzReport) -> None:  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
    )  # fmt: skip
    def run(case: schemathesis.Case) -> None:
        report.requests += 1
        try:
            response = case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=60)
            report.statuses[response.status_code] += 1
        except (AssertionError, FailureGroup) as e:  # a failed check: recorded, and the next case runs
            report.failures.append(f"{operation.label} ({mode.value}): {e}")

    # An operation with nothing to make invalid (no parameters, no body) has no negative cases.
    with contextlib.suppress(Unsatisfiable):
        run()


def fuzz(base_url: str, examples: int) -> FuzzReport:
    document = httpx.get(base_url + "/openapi.json", timeout=10).json()
    report = FuzzReport()
    for result in schemathesis.openapi.from_dict(document).get_all_operations():
        operation = result.ok()
        if operation.path in SKIPPED:
            continue
        report.operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _run(operation, mode, base_url, examples, report)
    return report
