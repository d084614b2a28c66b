"""python -m jangdok.bench --quick: runs end to end, prints its table and targets, writes the
report. No timing assertions: figures depend on the machine."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

QUICK_BUDGET_SECONDS = 90  # what --quick is built to stay under on 2 cores; not asserted (no timing assertions)


def test_importing_jangdok_does_not_import_the_bench() -> None:
    code = "import sys, jangdok; print('jangdok.bench' in sys.modules, 'jangdok.server' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


# Its own time limit, above the subprocess's: the suite-wide 180 s would cut a run that a machine
# loaded by other work (parallel test workers) slows beyond it, which is no defect.
@pytest.mark.timeout(QUICK_BUDGET_SECONDS * 5)
def test_quick_run_prints_the_table_and_targets_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "perf.md"
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # its scratch folder goes with the test's
    done = subprocess.run([sys.executable, "-m", "jangdok.bench", "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=QUICK_BUDGET_SECONDS * 4)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("case "))
    columns = ("median ms", "min ms", "MB/s", "S3 req", "faults", "RSS Δ / payload", "fresh ms", "vs seed",
               "vs ceiling", "vs best peer")
    for column in columns:
        assert column in header
    def measured(tool: str) -> bool:
        return any(line.split()[2:3] == [tool] for line in lines if line.startswith(("BIG ", "SMALL ")))

    for tool in ("jangdok", "seed", "pickle", "ceiling"):
        assert measured(tool), tool
    for peer in ("joblib", "diskcache", "s3fs", "obstore"):  # from the bench extra, where installed
        installed = importlib.util.find_spec(peer) is not None
        assert measured(peer) if installed else f"{peer} skipped: {peer} is not installed" in done.stderr, peer
    verdicts = [line for line in lines if line.startswith(("PASS ", "MISS "))]
    assert any("local BIG load (checksum verified)" in line for line in verdicts)
    assert any("S3 SMALL hit" in line for line in verdicts)
    assert not any("1 GB value" in line for line in verdicts), "--quick skips the 1 GB value"
    assert "Heap control" in done.stdout
    # The link section: its settings, its ceiling, and a verdict for each of its targets.
    assert "== Through a shaped link ==" in done.stdout
    assert "20 ms RTT, 25 MB/s per connection, 200 MB/s in total" in done.stdout
    assert "The link's ceiling, BIG: parallel ranged GETs" in done.stdout
    assert ": failed (" not in done.stdout, "every part of the link section ran"
    for target in ("link: BIG load vs the seed's", "link: BIG save vs the seed's", "link: SMALL hit",
                   "link: 100 SMALL hits, get_many vs one get at a time", "link: main.py warm run on S3"):
        assert any(target in line for line in verdicts), target
    assert not any("link: 1 GB" in line for line in verdicts), "--quick skips the 1 GB value"
    assert any("link: BIG load vs the best of" in line for line in verdicts)  # boto3's transfer manager at least
    report = out.read_text()
    sections = ("## Machine", "## Method", "Heap control", "## Results", "## Through a shaped link",
                "The link's ceiling, BIG", "## Targets", "| BIG | S3 | jangdok | load |")
    for section in sections:
        assert section in report
    assert "python -m jangdok.bench --quick" in report
    assert not list(tmp_path.glob("jangdok-bench-*")), "the scratch folder is removed"
