"""What ``tifffs render`` tells the user: a progress bar on a terminal, one line per
problem, and a summary at the end."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

from tifffs.problems import printable
from tifffs.tasks import COPIED, FAILED, RENDERED, UP_TO_DATE, Outcome


def human_bytes(count: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class Reporter:
    """Counts outcomes, prints problems as they come, and draws a bar when asked."""

    def __init__(self, total: int, stream: TextIO | None = None,
                 bar: bool | None = None) -> None:
        self.stream = stream or sys.stderr  # looked up now: it may be redirected
        self.counts: Counter[str] = Counter()
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = time.monotonic()
        show = self.stream.isatty() if bar is None else bar
        self._bar = None
        if show and total:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="file", file=stream, dynamic_ncols=True,
                             leave=False)

    def add(self, outcome: Outcome) -> None:
        """Count one file's outcome; a failure is printed at once."""
        self.counts[outcome.action] += 1
        self.bytes_in += outcome.bytes_in
        self.bytes_out += outcome.bytes_out
        if outcome.action == FAILED:
            self.line(f"tifffs: {printable(outcome.source)}: {outcome.error}")
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"{human_bytes(self.bytes_out)} written", refresh=False)

    def skip(self, path: str, why: str) -> None:
        """Count a file that the mount does not show either, and say why."""
        self.counts["skipped"] += 1
        self.line(f"tifffs: skipped {printable(path)}: {why}")

    def line(self, text: str) -> None:
        """Print one line without breaking the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    @property
    def failures(self) -> int:
        return self.counts[FAILED]

    def summary(self, interrupted: bool = False) -> str:
        """One line: files rendered, copied, up to date, skipped, failed; bytes; seconds."""
        c = self.counts
        text = (f"tifffs: {c[RENDERED]} rendered, {c[COPIED]} copied, {c[UP_TO_DATE]} up to "
                f"date, {c['skipped']} skipped, {c[FAILED]} failed; read "
                f"{human_bytes(self.bytes_in)}, wrote {human_bytes(self.bytes_out)} in "
                f"{time.monotonic() - self.started:.1f} s")
        if interrupted:
            text += "; interrupted: run the same command again to resume"
        return text

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
