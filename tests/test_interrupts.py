"""Ctrl-C and SIGTERM, sent for real to the ``jangdok`` command and to ``main.py`` at chosen
moments: one line, exit status 128 + the signal, no traceback, and nothing half written.

The moments are reached, not timed: a value whose pickling holds the command (tests/gate.py),
a video file that is a FIFO the program blocks reading. No sleep stands in for "by then"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gate import VARIABLE, Gate, prepare
from helpers import open_fifo_writer

from jangdok import Cache
from jangdok.console import Interrupts

# Every test here sends Ctrl-C, to this process or to a child it starts.
pytestmark = pytest.mark.usefixtures("ctrl_c_handled")

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _until(condition: object, process: subprocess.Popen[str]) -> None:
    """Wait for a condition the process brings about; fail at once if it exits first."""
    while not condition():  # type: ignore[operator]
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode} first:\n{process.communicate()}")
        time.sleep(0.01)


def _environment(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "JANGDOK_", "CACHE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**env, **extra}


def test_the_first_signal_interrupts_and_later_ones_wait_for_the_cleanup() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with Interrupts() as interrupts:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(60)  # the handler raises before this ends
        os.kill(os.getpid(), signal.SIGINT)  # while cleaning up: ignored
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupts.received == signal.SIGINT and interrupts.status == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert signal.getsignal(signal.SIGTERM) is before


def _get_held_while_writing(tmp_path: Path, **popen: Any) -> tuple[subprocess.Popen[str], Path, Path]:
    """``jangdok get label.pkl -o out/label.pkl``, held by a gate after 8 MB of the value are
    written out: the process, the gate's folder, and the output folder."""
    folder = tmp_path / "cache"
    Cache(str(folder)).put("label.pkl", [np.arange(1_000_000, dtype=np.float64), Gate(), "after the gate"])
    out = tmp_path / "out"
    out.mkdir()
    gate = prepare(tmp_path / "gate")
    process = subprocess.Popen([sys.executable, "-m", "jangdok", "--cache", str(folder), "get", "label.pkl",
                                "-o", str(out / "label.pkl")], env=_environment(**{VARIABLE: str(gate)}),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    try:
        _until((gate / "pickling").exists, process)
    except BaseException:
        process.kill()
        raise
    return process, gate, out


def test_a_command_started_with_ctrl_c_ignored_keeps_ignoring_it(tmp_path: Path) -> None:
    """``nohup``, or a shell's background job: the program was told to ignore SIGINT, and does.
    The command runs to its end through a Ctrl-C sent to it."""
    process, gate, out = _get_held_while_writing(
        tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        process.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):  # still holding: nothing interrupted it
            process.wait(timeout=1)
        for fifo in ("hold", "release"):  # let it write the rest, then finish
            writer = open_fifo_writer(gate / fifo, process)
            if writer is not None:
                os.close(writer)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert (process.returncode, stderr) == (0, ""), stderr
    assert [path.name for path in out.iterdir()] == ["label.pkl"]


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_get_to_a_file_interrupted_while_writing_leaves_no_file(tmp_path: Path, number: int) -> None:
    """Interrupted half way through writing the value out, then a second Ctrl-C while the
    process shuts down: the file is not there (nor any temporary file), one line is said, and
    the exit status is 128 + the first signal."""
    process, gate, out = _get_held_while_writing(tmp_path)
    try:
        process.send_signal(number)
        _until((gate / "exiting").exists, process)  # shutting down, after the command's cleanup
        process.send_signal(signal.SIGINT)
        writer = open_fifo_writer(gate / "release", process)
        if writer is not None:
            os.close(writer)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + number
    assert stderr == "jangdok: interrupted\n" and stdout == ""
    assert list(out.iterdir()) == []


def test_get_to_a_file_replaces_it_whole(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    Cache(str(folder)).put("x.pkl", {"new": True})
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "x.pkl"
    out.write_bytes(b"the previous file")
    result = subprocess.run([sys.executable, "-m", "jangdok", "--cache", str(folder), "get", "x.pkl", "-o", str(out),
                             "--format", "json"], env=_environment(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == '{\n  "new": true\n}\n'
    assert [path.name for path in out.parent.iterdir()] == ["x.pkl"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_main_interrupted_says_one_line(tmp_path: Path) -> None:
    """main.py blocked reading a video (a FIFO: it waits for a writer's bytes) gets Ctrl-C."""
    from chapter_generator import generate_sample_dataset, load_chapters, load_labels

    data = tmp_path / "data"
    generate_sample_dataset(data)
    chapter, labels = next(iter(load_chapters(data).items()))
    video = load_labels(data)[labels[0]][0]
    video.unlink()
    os.mkfifo(video)
    cache = tmp_path / "cache"
    # One process: the label is computed in main.py's own (tests/test_cluster.py stops a pool).
    process = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--chapter", chapter, "--data-dir", str(data),
                                "--cache-dir", str(cache), "--output-dir", str(tmp_path / "out"), "--workers", "1"],
                               env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        writer = open_fifo_writer(video, process)  # main.py has opened it and waits for bytes
        assert writer is not None, process.communicate()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
        os.close(writer)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert stderr == "⛔ interrupted (중단됨)\n"
    assert not any(path.name.startswith(".jangdok-tmp-") for path in cache.rglob("*"))
    assert list(Cache(str(cache)).keys()) == []  # nothing was saved
