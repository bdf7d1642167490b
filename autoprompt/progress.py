"""Progress that shows everywhere: a tqdm bar on a terminal, one-line reports in a log file.

``progress(...)`` takes tqdm's arguments and returns a tqdm object; use it for every long loop. When
stderr is a terminal it is an ordinary bar. When it is not (``nohup``, SLURM, ``> log 2>&1``), tqdm's bar
would be switched off (or fill the file with carriage returns), so whole lines are written instead: a
start line once the step has run ``START_DELAY_S`` seconds (even while its first item is still running),
then at most one line every ``LINE_INTERVAL_S`` seconds with percent, rate and ETA, and a last line::

    encoding: started, 120 case
    encoding: 35% (42/120 case), 1.41 s/case, elapsed 00:59, ETA 01:50
    encoding: done, 120 case in 02:49 (1.41 s/case)

A step that ends (or fails) within ``START_DELAY_S`` writes nothing, so quick commands and one-line
errors stay as they were.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

LINE_INTERVAL_S = 30.0
"""Seconds between two progress lines when stderr is not a terminal."""
START_DELAY_S = 10.0
"""A step's start line is written once it has run this long (not a terminal)."""


def is_terminal(stream: IO | None = None) -> bool:
    """Whether ``stream`` (default: stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(
    iterable: Iterable | None = None,
    *,
    desc: str,
    total: float | None = None,
    unit: str = "it",
    leave: bool = True,
    enabled: bool = True,
    interval: float = LINE_INTERVAL_S,
    delay: float = START_DELAY_S,
    file: IO | None = None,
    eta: bool = True,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar on a terminal, periodic one-line reports otherwise (see the module docstring).

    Args:
        iterable: what to iterate over, or None to call ``update`` yourself.
        desc: what runs, e.g. "encoding"; starts every line.
        total: the number of items (default: ``len(iterable)`` where it has one).
        unit: the items' name.
        leave: keep the finished bar; without a terminal, write the "done" line.
        enabled: False shows nothing (e.g. on processes other than rank 0).
        interval: the least number of seconds between two lines without a terminal.
        delay: seconds before the start line without a terminal.
        file: where to write (default: stderr).
        eta: show the rate and the time left; False where items take very different times (a benchmark's
            steps), as both would mislead.
        **kwargs: other tqdm arguments (``position``, ``postfix``, ...).
    """
    file = sys.stderr if file is None else file
    if not enabled:
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True, **kwargs)
    if is_terminal(file):
        if not eta:
            kwargs.setdefault("bar_format", "{l_bar}{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}]")
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=file, **kwargs)
    return LineProgress(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=leave,
        file=file,
        interval=interval,
        delay=delay,
        eta=eta,
        **kwargs,
    )


class LineProgress(tqdm):
    """tqdm that writes whole lines (start, at most one per ``interval`` seconds, end) instead of a bar."""

    def __init__(
        self,
        *args: Any,
        interval: float = LINE_INTERVAL_S,
        delay: float = START_DELAY_S,
        eta: bool = True,
        **kwargs: Any,
    ) -> None:
        self._interval = float(interval)
        self._eta = eta
        self._delay = float(delay)
        self._created = time.monotonic()
        self._last_line: float | None = None  # when the last line was written (None: not yet)
        self._timer: threading.Timer | None = None
        # tqdm's update() offers display() a line at most once a second; display() keeps to the interval
        kwargs.update(mininterval=min(1.0, self._interval), miniters=1, dynamic_ncols=False, ascii=True)
        super().__init__(*args, **kwargs)
        if not self.disable:
            # the start line even while the first item runs; a weak reference lets an abandoned bar go
            self._timer = threading.Timer(
                self._delay, _call_if_alive, args=(weakref.WeakMethod(self._start),)
            )
            self._timer.daemon = True
            self._timer.start()

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Write one progress line, not before ``delay`` and at most one per ``interval`` seconds."""
        now = time.monotonic()
        if msg == "" or now - self._created < self._delay:
            return True
        if self._last_line is not None and now - self._last_line < self._interval:
            return True
        started = self._last_line is None
        self._last_line = now
        self._write(self._line(started=started))
        return True

    def _start(self) -> None:
        """The start line, from the timer, unless a line was written already."""
        with self.get_lock():
            if not self.disable and self._last_line is None:
                self._last_line = time.monotonic()
                self._write(self._line(started=True))

    def clear(self, nolock: bool = False) -> None:
        """Nothing to clear: lines are never overwritten."""

    def close(self) -> None:
        """Write the last line (with ``leave``, and only if the start line was written) and retire."""
        if self.disable:
            return
        if self._timer is not None:
            self._timer.cancel()
        with self.get_lock():
            if self.leave and self._last_line is not None:
                self._write(self._line(finished=True))
            self.disable = True
        self._decr_instances(self)

    def _line(self, *, started: bool = False, finished: bool = False) -> str:
        desc = self.desc.removesuffix(": ")  # tqdm's set_description appends ": " itself
        what = f"{desc}: " if desc else ""
        unit = self.unit
        elapsed = self._time() - getattr(self, "start_t", self._time())
        rate = self.n / elapsed if elapsed > 0 else 0.0
        count = f"{self.n:g}/{self.total:g} {unit}" if self.total else f"{self.n:g} {unit}"
        if finished and self.total and self.n < self.total:  # an error or a break ended the loop
            return f"{what}stopped at {count} after {self.format_interval(elapsed)}"
        if finished:
            rate_note = f" ({_rate(rate, unit)})" if self._eta else ""
            return f"{what}done, {self.n:g} {unit} in {self.format_interval(elapsed)}{rate_note}"
        if started and self.n == 0:
            return f"{what}started, {self.total:g} {unit}" if self.total else f"{what}started"
        line = f"{what}{100 * self.n / self.total:.0f}% ({count})" if self.total else f"{what}{count}"
        if self._eta:
            line += f", {_rate(rate, unit)}"
        line += f", elapsed {self.format_interval(elapsed)}"
        if self._eta and self.total and rate > 0:
            line += f", ETA {self.format_interval((self.total - self.n) / rate)}"
        if self.postfix:
            line += f", {self.postfix}"
        return line

    def _write(self, line: str) -> None:
        try:
            self.fp.write(line + "\n")
            self.fp.flush()
        except ValueError:  # the stream was closed (interpreter shutdown)
            pass


def _call_if_alive(method: weakref.WeakMethod) -> None:
    bound = method()
    if bound is not None:
        bound()


def _rate(rate: float, unit: str) -> str:
    """``0.71 case/s``, or ``12.3 s/case`` for slow steps."""
    if rate <= 0:
        return f"? {unit}/s"
    return f"{rate:.3g} {unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{unit}"
