"""schemathesis against a real server: a few generated requests per operation of the published OpenAPI
document, valid and invalid ones, each answered without a server error and as the document says (status
code, media type, body schema). `make fuzz` runs the same with many more examples."""

from __future__ import annotations

from tests.fuzz.runner import fuzz
from tests.live_server import Server


def test_fuzzed_requests_get_documented_answers(server: Server) -> None:
    report = fuzz(server.url, examples=3)
    assert report.operations >= 20 and report.requests > 3 * report.operations
    assert not report.failures, "\n\n".join(report.failures[:5])
    assert report.server_errors == 0
    assert report.statuses[200] > 0 and report.statuses[400] > 0, report.statuses
