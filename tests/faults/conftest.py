"""The fault suite's tally: every fault test records what it injected and what survived; the summary lines are
printed at the end of the run (they must say 0 data items lost and all resumes intact; for hostile inputs, all
refused in one line, nothing written outside its folder, no file content echoed)."""
from __future__ import annotations

from collections import Counter

import pytest

TALLY: Counter = Counter()


@pytest.fixture()
def tally() -> Counter:
    return TALLY


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest hook
    if TALLY["trials"] or TALLY["resumes"]:
        terminalreporter.write_line(
            f"fault suite: trials run {TALLY['trials']}, faults injected {TALLY['faults']}, "
            f"resumes intact {TALLY['resumes_intact']}/{TALLY['resumes']}, data items lost {TALLY['items_lost']}"
        )
    if TALLY["rank_failures"]:
        terminalreporter.write_line(
            f"rank failures: {TALLY['rank_failures']} two-process jobs ended non-zero with the real error printed "
            f"once, the slowest {TALLY['slowest_end_s']} s after its fault (start-up included), none hung"
        )
    if TALLY["cases"]:
        terminalreporter.write_line(
            f"hostile inputs: refused in one line {TALLY['refused']}/{TALLY['cases']}, files written outside their "
            f"folder {TALLY['outside']}, file contents echoed {TALLY['echoed']}, code run that was not asked for "
            f"{TALLY['executed']}"
        )
    if TALLY["loads"]:
        terminalreporter.write_line(f"loads while a training rotates checkpoints: {TALLY['loads_ok']}/"
                                    f"{TALLY['loads']} succeeded")
