"""Which threads keep their Python thread state (``tifffs.threadstate``), without a mount.

The mount tests (``test_listing.py``) show the effect through libfuse's own threads;
here the counting, in Python threads (whose states Python deletes when they end).
"""

from __future__ import annotations

import threading

import pytest

from tifffs import threadstate


def _in_a_thread(calls: int) -> list[int]:
    """``threads_kept()`` after each of ``calls`` requests served by one new thread."""
    seen: list[int] = []

    def serve() -> None:
        for _ in range(calls):
            threadstate.keep_thread_state()
            seen.append(threadstate.threads_kept())

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    return seen


@pytest.mark.parametrize("keep_after", [1, 3])
def test_a_thread_keeps_its_state_at_its_keep_after_th_request(monkeypatch, keep_after):
    monkeypatch.setattr(threadstate, "KEEP_AFTER", keep_after)
    monkeypatch.setattr(threadstate, "_kept", 0)
    assert _in_a_thread(5) == [0] * (keep_after - 1) + [1] * (5 - keep_after + 1)


def test_no_more_threads_than_the_cap_keep_their_state(monkeypatch):
    monkeypatch.setattr(threadstate, "KEEP_AFTER", 1)
    monkeypatch.setattr(threadstate, "MAX_KEPT", 2)
    monkeypatch.setattr(threadstate, "_kept", 0)
    assert [_in_a_thread(1)[-1] for _ in range(4)] == [1, 2, 2, 2]
