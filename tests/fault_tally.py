"""The fault suite's tally, a pytest plugin (tests/conftest.py loads it): every fault test records what it
injected and what survived; the summary lines are printed at the end of the run (they must say 0 data items lost
and all resumes intact; for hostile inputs, all refused in one line, nothing written outside its folder, no file
content echoed).

A test's counts travel in its teardown report (``user_properties``), so the summary adds up the tests of every
pytest-xdist worker in the process that prints it."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

TALLY: Counter = Counter()  # the whole run's counts, in the process that prints the summary
PROPERTY = "fault_tally"


@pytest.fixture()
def tally(request: pytest.FixtureRequest) -> Iterator[Counter]:
    counts: Counter = Counter()
    yield counts
    request.node.user_properties.append((PROPERTY, dict(counts)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, counts in report.user_properties if report.when == "teardown" else ():
        if name == PROPERTY:
            for key, value in counts.items():
                TALLY[key] = max(TALLY[key], value) if key.startswith("slowest") else TALLY[key] + value


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
