"""The command line's logging. Library code only logs (``logging.getLogger(__name__)``) and never configures
logging: a Python program that imports vaeforge decides what it shows (with nothing set up, warnings still
reach stderr through logging's last resort and info lines are dropped). Every entry point (:func:`entry_point`)
sets it up once for the command it runs:

- info lines as they are, on stdout; ``vaeforge: warning: ...``, ``vaeforge: error: ...`` (and ``vaeforge:
  debug: ...``) on stderr, written around a progress bar (pip's convention: ``-q`` leaves only the problems);
- ``-q``/``--quiet``: warnings and errors only; ``-v``/``--verbose``: debug lines too;
- on a multi-process run, ranks other than 0 show warnings and errors only (rank 0 speaks for the run).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tqdm import tqdm

from ..errors import VaeforgeError

NAMESPACES = ("vaeforge", "vaeforge_plugins")  # the loggers a command sets up (the engine's and its plugins')
LEVEL_FLAGS = {"-q": logging.WARNING, "--quiet": logging.WARNING, "-v": logging.DEBUG, "--verbose": logging.DEBUG}
FLAGS_HELP = "-q/--quiet: warnings and errors only; -v/--verbose: debug lines too"
log = logging.getLogger("vaeforge")


class LineFormatter(logging.Formatter):
    """An info line as it is; any other level named after ``vaeforge:`` (the wording of every error line)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno == logging.INFO else f"vaeforge: {record.levelname.lower()}: {text}"


class CommandHandler(logging.Handler):
    """Info lines on stdout, the others on stderr: the streams of the moment (a test's capture too), written
    through tqdm so that a progress bar is redrawn below the line instead of broken by it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if record.levelno == logging.INFO else sys.stderr
            tqdm.write(self.format(record), file=stream)
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own contract: a failed emit is reported, never raised
            self.handleError(record)


def level_flags(argv: Sequence[str]) -> tuple[int, list[str]]:
    """The level the flags in ``argv`` ask for (the last one wins; info without any) and the other arguments."""
    level = logging.INFO
    for arg in argv:
        level = LEVEL_FLAGS.get(arg, level)
    return level, [arg for arg in argv if arg not in LEVEL_FLAGS]


def process_rank() -> int:
    """This process's rank in a multi-process launch (torchrun, accelerate, submitit set RANK), else 0."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def command_logging(level: int) -> Iterator[None]:
    """vaeforge's loggers set up for one command at ``level`` (warnings at least on ranks other than 0), and
    put back as they were afterwards (a command called from Python leaves the caller's logging alone)."""
    handler = CommandHandler()
    handler.setFormatter(LineFormatter())
    level = level if process_rank() == 0 else max(level, logging.WARNING)
    loggers = [logging.getLogger(name) for name in NAMESPACES]
    saved = [(logger.level, list(logger.handlers)) for logger in loggers]
    for logger in loggers:
        logger.handlers = [h for h in logger.handlers if not isinstance(h, CommandHandler)] + [handler]
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, (old_level, handlers) in zip(loggers, saved):
            logger.setLevel(old_level)
            logger.handlers = handlers


_running = False  # a command is running in this process: a verb called by `vaeforge <verb>` keeps its logging


def entry_point(fn: Callable[[list[str]], Any]) -> Callable[..., Any]:
    """Run a command's ``main(argv)`` (``sys.argv[1:]`` when None): ``-q``/``-v`` taken out of its arguments,
    logging set up for it, and a :class:`VaeforgeError` turned into one ``vaeforge: error: ...`` line on stderr
    and exit status 2. A command run by another (``vaeforge train``) keeps the outer one's set-up."""

    @functools.wraps(fn)
    def wrapper(argv: Sequence[str] | None = None) -> Any:
        global _running
        level, args = level_flags(sys.argv[1:] if argv is None else argv)
        if _running:
            return fn(args)
        _running = True
        try:
            with command_logging(level):
                try:
                    return fn(args)
                except VaeforgeError as exc:
                    log.error(one_line(exc))
                    raise SystemExit(2) from None
        finally:
            _running = False

    return wrapper


def one_line(exc: BaseException) -> str:
    """The error's own message. An error raised in a DataLoader worker arrives re-raised with the worker's
    traceback as its message: its last line ("module.Class: message") holds the message."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if f"{type(exc).__name__}: " in last else last
