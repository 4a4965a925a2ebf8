"""The fuzzer (``tests/fuzzing.py``) in its short CI setting: a fixed seed and a fixed
number of examples, in a fresh interpreter (a crash in a codec, a hang or a runaway
allocation must fail this test, not take pytest down).

Long runs by hand: ``scripts/fuzz SECONDS`` (see ``tests/fuzzing.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

FUZZER = Path(__file__).with_name("fuzzing.py")
CI_EXAMPLES = int(os.environ.get("TIFFFS_FUZZ_EXAMPLES", "3000"))
CI_SEED = int(os.environ.get("TIFFFS_FUZZ_SEED", "0"))
HANG = 600  # seconds for the whole run: only a hang detector


def test_fuzzed_tiffs_give_mapped_errors_only(tmp_path):
    findings = tmp_path / "findings"
    command = [sys.executable, str(FUZZER), "--examples", str(CI_EXAMPLES), "--seed",
               str(CI_SEED), "--findings", str(findings), "--hang-seconds", "10"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=HANG, check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the fuzzer hangs; the input it was on: "
                             f"{findings / 'current.tif'}") from None
    report = f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    if result.returncode < 0:
        raise AssertionError(f"the fuzzer crashed ({signal.Signals(-result.returncode).name})"
                             f" on {findings / 'current.tif'}:\n{report}")
    saved = sorted(p.name for p in findings.glob("*.txt"))
    assert result.returncode == 0, f"findings {saved} in {findings}:\n{report}"
    assert f"{CI_EXAMPLES} examples" in result.stdout, report


def test_past_findings_give_their_size_or_an_errno(tmp_path):
    """Every input that once broke a rule (``fuzz-regressions/``: the file, and in
    ``index.json`` the view it broke and how) is checked again, in a fresh interpreter."""
    regressions = Path(__file__).with_name("fuzz-regressions")
    command = [sys.executable, str(FUZZER), "--replay", str(regressions), "--findings",
               str(tmp_path / "findings"), "--hang-seconds", "10"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=HANG, check=False)
    report = f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    assert result.returncode == 0, report
    assert f"replayed {len(list(regressions.glob('*.tif')))} past findings, 0 still broken" \
        in result.stdout, report
