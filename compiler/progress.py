"""What bnnc is doing, on stderr, while it works: one plain line per step or milestone.

Steps go through the stdlib logger "bnnc" (a notebook or a program can attach its own handler;
`set_verbosity` installs the default one, which writes `bnnc: ...` lines to the current
`sys.stderr`). Levels:

- QUIET (`bnnc -q`): nothing; errors still end as the one `bnnc: error:` line.
- NORMAL (the default): a step that is still running after SLOW_S seconds says so, and says when
  it is done and how long it took; quick steps print nothing, so a quick command stays silent.
- VERBOSE (`bnnc -v`): every step, with its time.

Plain lines are what a log or a pipe (`2>&1 | cat`) keeps; on a terminal, per-sample loops also
show a tqdm bar (erased when done) between their milestone lines.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import contextmanager

QUIET, NORMAL, VERBOSE = 0, 1, 2
SLOW_S = 2.0  # a step running longer than this is announced at the NORMAL level
MILESTONE_S = 10.0  # at most one milestone line per loop in this many seconds

log = logging.getLogger("bnnc")


class _StderrHandler(logging.Handler):
    """`bnnc: message` lines on whatever sys.stderr is when the line is written (tests swap it)."""

    def emit(self, record):
        try:
            line = f"bnnc: {self.format(record)}"
            if _bars:  # above the bars, which tqdm then redraws
                from tqdm import tqdm

                tqdm.write(line, file=sys.stderr)
                return
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except Exception:  # a closed stderr must not turn progress into an error
            pass


_handler = _StderrHandler()
_bars = []  # the terminal bars shown now
_LEVELS = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}


LEVEL_NAMES = {"quiet": QUIET, "normal": NORMAL, "verbose": VERBOSE}


def default_level() -> int:
    """The command's level without -v / -q: BNNC_PROGRESS=quiet|normal|verbose, else NORMAL."""
    from .errors import BnncError

    name = os.environ.get("BNNC_PROGRESS", "normal")
    if name not in LEVEL_NAMES:
        raise BnncError(f"BNNC_PROGRESS={name!r}: use one of {', '.join(LEVEL_NAMES)}")
    return LEVEL_NAMES[name]


def set_verbosity(level: int) -> None:
    """QUIET, NORMAL or VERBOSE for the lines bnnc writes to stderr (the CLI's -q / -v)."""
    if _handler not in log.handlers:
        log.addHandler(_handler)
        log.propagate = False
    log.setLevel(_LEVELS[max(QUIET, min(VERBOSE, level))])


def live() -> bool:
    """Whether live terminal output (bars, a simulator's own counter) is wanted."""
    return log.isEnabledFor(logging.INFO) and _handler in log.handlers and _isatty()


def _isatty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Step:
    """A running step: `advance()` per item of a loop of `total` items."""

    def __init__(self, what: str, total: int | None = None):
        self.what, self.total, self.done = what, total, 0
        self.t0 = self.last = time.monotonic()
        self.announced = False
        self.bar = None
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()  # loops may advance from worker threads
        self._timer = None

    def _announce(self, level=logging.INFO) -> None:
        with self._lock:
            if not self.announced:
                self.announced = True
                log.log(level, "%s ...", self.what)

    def start(self) -> None:
        if self.total and self.total > 1 and live():  # the bar shows the step: no announcement line
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=self.what, file=sys.stderr, leave=False, delay=SLOW_S,
                            unit="", dynamic_ncols=True)
            _bars.append(self.bar)
        if log.isEnabledFor(logging.DEBUG):
            self._announce(logging.DEBUG)
        elif log.isEnabledFor(logging.INFO) and self.bar is None:
            self._timer = threading.Timer(SLOW_S, self._announce)
            self._timer.daemon = True
            self._timer.start()

    def advance(self, k: int = 1) -> None:
        with self._count_lock:
            self.done += k
            if self.bar is not None:
                self.bar.update(k)
                return
            now = time.monotonic()
            if not (self.total and now - self.last >= MILESTONE_S and now - self.t0 >= SLOW_S
                    and self.done < self.total):
                return
            self.last = now
        self._announce()
        log.info("%s: %d/%d (%.0f s)", self.what, self.done, self.total, now - self.t0)

    def finish(self, failed: bool) -> float:
        if self._timer is not None:
            self._timer.cancel()
        if self.bar is not None:
            self.bar.close()
            _bars.remove(self.bar)
        dt = time.monotonic() - self.t0
        if failed:
            if self.announced:
                log.info("%s: stopped after %.1f s", self.what, dt)
        elif self.announced or dt >= SLOW_S:
            log.info("%s: done in %.1f s", self.what, dt)
        else:
            log.debug("%s: done in %.2f s", self.what, dt)
        return dt


@contextmanager
def step(what: str, total: int | None = None):
    """A step of `what` (a loop of `total` items when given): announced and timed as the level says."""
    s = Step(what, total)
    s.start()
    try:
        yield s
    except BaseException:
        s.finish(failed=True)
        raise
    s.finish(failed=False)


def note(message: str) -> None:
    """A line at the VERBOSE level (what was chosen, what was cached)."""
    log.debug("%s", message)
