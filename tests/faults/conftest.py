"""The fault suite's tally: every fault test records what it injected and what survived; the summary line is
printed at the end of the run (and must say 0 data items lost and all resumes intact)."""
from __future__ import annotations

from collections import Counter

import pytest

TALLY: Counter = Counter()


@pytest.fixture()
def tally() -> Counter:
    return TALLY


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest hook
    if TALLY:
        terminalreporter.write_line(
            f"fault suite: trials run {TALLY['trials']}, faults injected {TALLY['faults']}, "
            f"resumes intact {TALLY['resumes_intact']}/{TALLY['resumes']}, data items lost {TALLY['items_lost']}"
        )
