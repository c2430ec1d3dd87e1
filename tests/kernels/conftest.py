"""Fixtures of the kernel tests."""

from __future__ import annotations

import pytest

from wicore.kernels import build


@pytest.fixture(params=build.host_targets(build.cpu_flags()), ids=lambda t: t.isa)
def isa(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once per kernel build this CPU can execute (AVX2 always, AVX-512 VNNI, AMX)."""
    monkeypatch.setattr(build, "TARGET", request.param)
    return request.param.isa
