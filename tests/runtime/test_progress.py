"""Progress that shows everywhere (issue #18): a bar on a terminal, timed one-line reports in a file."""

from __future__ import annotations

import io
import re
import time

from tqdm import tqdm

from autoprompt.progress import LineProgress, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_an_ordinary_bar() -> None:
    stream = _Terminal()
    bar = progress(range(3), desc="encoding", unit="case", file=stream)
    assert type(bar) is tqdm and not bar.disable
    list(bar)
    assert "encoding" in stream.getvalue() and "\r" in stream.getvalue()


def test_a_file_gets_a_start_line_periodic_lines_with_rate_and_eta_and_an_end_line() -> None:
    stream = io.StringIO()
    bar = progress(range(6), desc="encoding", unit="case", file=stream, interval=0.1, delay=0.05)
    assert isinstance(bar, LineProgress)
    for _ in bar:
        time.sleep(0.06)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0] == "encoding: started, 6 case"
    periodic = [line for line in lines[1:-1]]
    assert periodic and all(
        re.fullmatch(r"encoding: \d+% \(\d/6 case\), [\d.]+ (case/s|s/case), elapsed \S+, ETA \S+", line)
        for line in periodic
    ), lines
    assert len(periodic) <= 4  # at most one line per interval (6 x 0.06 s at 0.1 s)
    assert re.fullmatch(r"encoding: done, 6 case in \S+ \(.+\)", lines[-1])


def test_the_start_line_comes_while_the_first_item_still_runs() -> None:
    stream = io.StringIO()
    bar = progress(total=2, desc="building cache", unit="case", file=stream, delay=0.05)
    time.sleep(0.3)  # the first case takes long: the timer writes the start line anyway
    assert stream.getvalue() == "building cache: started, 2 case\n"
    bar.update(2)
    bar.close()
    assert stream.getvalue().splitlines()[-1].startswith("building cache: done, 2 case in")


def test_a_new_description_reads_like_the_first() -> None:
    stream = io.StringIO()
    bar = progress(total=2, desc="benchmark", unit="step", file=stream, interval=0, delay=0)
    bar.set_description("autoprompt train_3: training")
    bar.update()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[-2].startswith("autoprompt train_3: training: 50% (1/2 step)"), lines
    assert lines[-1].startswith("autoprompt train_3: training: stopped at 1/2 step"), lines


def test_without_eta_lines_give_counts_and_elapsed_time_only() -> None:
    stream = io.StringIO()
    bar = progress(total=3, desc="benchmark", unit="step", file=stream, interval=0, delay=0, eta=False)
    bar.update()
    assert re.fullmatch(r"benchmark: 33% \(1/3 step\), elapsed \S+", stream.getvalue().splitlines()[-1])
    bar.update(2)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(r"benchmark: done, 3 step in \S+", lines[-1]), lines
    terminal = _Terminal()
    with progress(total=2, desc="benchmark", unit="step", file=terminal, eta=False) as bar:
        bar.update(2)
    assert "2/2 step" in terminal.getvalue() and "s/step" not in terminal.getvalue()
    assert "<" not in terminal.getvalue()  # no time left


def test_quick_steps_write_nothing_and_a_failed_step_says_where_it_stopped() -> None:
    stream = io.StringIO()
    for _ in progress(range(3), desc="quick", file=stream):  # shorter than the start delay
        pass
    assert stream.getvalue() == ""
    stream = io.StringIO()
    bar = progress(total=4, desc="verify", unit="case", file=stream, delay=0.0)
    time.sleep(0.1)
    bar.update(1)
    bar.close()
    assert stream.getvalue().splitlines()[-1].startswith("verify: stopped at 1/4 case after")


def test_disabled_and_leave_false() -> None:
    stream = io.StringIO()
    assert progress(range(2), desc="rank 1", file=stream, enabled=False).disable
    bar = progress(total=2, desc="epoch 1/2", unit="it", file=stream, leave=False, delay=0.0)
    time.sleep(0.05)
    bar.update(2)
    bar.close()
    assert stream.getvalue() == "epoch 1/2: started, 2 it\n"  # no end line: the epoch's own log line follows
