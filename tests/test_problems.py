"""ProblemLog and printable on their own: one log line per file and cause, bounded memory."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tifffs import problems
from tifffs.problems import ProblemLog, printable


@pytest.mark.parametrize("name, expected", [
    ("plain name.tif", "plain name.tif"),
    ("two\nlines.tif", "two\\nlines.tif"),
    ("tab\tand\rreturn", "tab\\tand\\rreturn"),
    ("caf\u00e9 \u00b5m.tif", "caf\u00e9 \u00b5m.tif"),
    ("bad\udcffbyte.tif", "bad\\xffbyte.tif"),  # os.fsdecode of b"bad\xffbyte.tif"
    ("\x1b[31mred", "\\x1b[31mred"),
])
def test_printable_escapes_what_could_break_or_forge_a_line(name, expected):
    assert printable(name) == expected


@given(st.text())
def test_printable_is_always_one_printable_line(text):
    line = printable(text)
    assert line.isprintable()
    assert "\n" not in line and "\r" not in line


def _error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]


def test_one_log_line_per_file_and_cause_every_occurrence_counted(caplog):
    log = ProblemLog()
    with caplog.at_level(logging.ERROR, logger="tifffs"):
        for _ in range(3):
            log.report("/src/a.tif", "truncated strip", "EIO")
        log.report("/src/a.tif", "permission denied", "EACCES")
        log.report("/src/b\n.tif", "truncated strip", "EIO")
    assert _error_lines(caplog) == ["/src/a.tif: truncated strip (EIO)",
                                    "/src/a.tif: permission denied (EACCES)",
                                    "/src/b\\n.tif: truncated strip (EIO)"]
    assert log.errors_per_file() == {"/src/a.tif": 4, "/src/b\\n.tif": 1}
    assert log.errors_total() == 5


def test_memory_stays_bounded_for_any_number_of_failing_files(monkeypatch, caplog):
    monkeypatch.setattr(problems, "MAX_REMEMBERED", 5)
    log = ProblemLog()
    with caplog.at_level(logging.CRITICAL, logger="tifffs"):
        for i in range(50):
            log.report(f"/src/{i}.tif", "broken", "EIO")
        log.report("/src/48.tif", "broken", "EIO")  # the most recent stay
    per_file = log.errors_per_file()
    assert len(per_file) == 5
    assert per_file == {"/src/45.tif": 1, "/src/46.tif": 1, "/src/47.tif": 1,
                        "/src/49.tif": 1, "/src/48.tif": 2}
    assert len(log._seen) <= 5
    assert log.errors_total() == 51


def test_a_forgotten_pair_is_logged_again(monkeypatch, caplog):
    monkeypatch.setattr(problems, "MAX_REMEMBERED", 2)
    log = ProblemLog()
    with caplog.at_level(logging.ERROR, logger="tifffs"):
        for name in ("a", "b", "c", "a"):
            log.report(name, "broken", "EIO")
    assert len(_error_lines(caplog)) == 4
