"""Read-ahead, one object per open handle (two readers of one file do not reset each
other's run), in the manner of fsspec's cache classes: it decides from the reads it
sees how many bands to render ahead, and counts what it did."""

from __future__ import annotations

from dataclasses import dataclass

#: (page, plane, band) of a view
BandKey = tuple[int, int, int]
#: A reader is sequential once it has read on into this many bands in a row.
START_AFTER_BANDS = 4
#: Reads this close to where the run got to (before or after) continue the run.
IN_ORDER_SLACK = 1 << 20


@dataclass
class ReadAheadStats:
    reads: int = 0
    runs_started: int = 0  # times a reader was seen going on through the file
    bands_requested: int = 0  # bands asked to be rendered ahead


class SequentialReadAhead:
    """Render ``depth`` bands ahead (two per core: they render side by side, and a core
    is not left idle while the reader's next request is on its way) of a
    reader that has read on into four bands in order: a copy, not a look at one
    page (the kernel's own read-ahead alone reaches two bands past a small page)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.stats = ReadAheadStats()
        self._end = -1
        self._last_band: BandKey | None = None
        self._bands_in_run = 0

    def after_read(self, offset: int, end: int, last_band: BandKey) -> int:
        self.stats.reads += 1
        # the kernel's read-ahead sends a few requests at once, so they may arrive a
        # little out of order: near where the run has got to is still the same run
        if abs(offset - self._end) > IN_ORDER_SLACK:
            self._bands_in_run = 0
        if last_band != self._last_band:
            self._bands_in_run += 1
            self._last_band = last_band
            if self._bands_in_run == START_AFTER_BANDS:
                self.stats.runs_started += 1
        self._end = max(self._end, end) if self._bands_in_run else end
        if self._bands_in_run < START_AFTER_BANDS:
            return 0
        self.stats.bands_requested += self.depth
        return self.depth

