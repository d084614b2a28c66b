"""``main.py`` (the chapter generator, beside the package in a source checkout) run warm on a
local folder and on S3 through the shaped link, each a whole program run in a new process."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .tools import BUCKET, Context

ROOT = Path(__file__).resolve().parents[3]  # src/jangdok/bench/apprun.py -> the checkout
SCRIPT = ROOT / "main.py"
_READ = re.compile(r"cache \((?:S3|local)\): (\d+) hits, (\d+) misses, read ([\d.]+) MB")


def s3_env(ctx: Context) -> dict[str, str]:
    env = {"AWS_ACCESS_KEY_ID": ctx.access_key, "AWS_SECRET_ACCESS_KEY": ctx.secret_key,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": ctx.endpoint, "JANGDOK_FALLBACK": "0"}
    concurrency, part_size = ctx.transfer()
    return {**env, "JANGDOK_CONCURRENCY": str(concurrency), "JANGDOK_PART_SIZE": str(part_size)}


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    # The developer's cache settings stay out: only what this run sets reaches the program.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "JANGDOK_", "CACHE_"))}
    base["AWS_EC2_METADATA_DISABLED"] = "true"  # nothing leaves the machine
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env={**base, **env},
                          capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"main.py {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def copy_entries(source: str, target: Context, url: str) -> None:
    """Every entry of the folder ``source`` saved under ``url`` with its metadata, as a cold run
    on S3 would have left them (and in a fraction of its time: nothing is computed)."""
    from jangdok import Cache, Settings

    with Cache.from_settings(Settings(cache_dir=source, fallback=False)) as local, \
            Cache.from_settings(target.jangdok_settings(url)) as remote:
        for key in list(local.keys()):
            entry = local.get_entry(key)
            if entry is not None:
                remote.put(key, entry.value, metadata=entry.info.metadata)


def warm_runs(direct: Context, link: Context, workdir: str, quick: bool, reps: int) -> dict[str, Any]:
    """A cold run fills a local folder, whose entries are then copied to an S3 prefix straight
    to the server; then ``reps`` rounds of one warm run on each, alternating, the S3 one through
    the link."""
    work = Path(workdir) / "app"
    data = work / "data"
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
                    "from chapter_generator import generate_sample_dataset; generate_sample_dataset(Path(sys.argv[2]))",
                    str(ROOT), str(data)], check=True, timeout=300)
    chapters = json.loads((data / "chapters.json").read_text(encoding="utf-8"))
    args = ["--data-dir", str(data), "--output-dir", str(work / "out"), "-q"]
    if quick:  # the chapter with the fewest labels
        args += ["--chapter", min(chapters, key=lambda name: len(chapters[name]))]
    folder, url = str(work / "cache"), f"s3://{BUCKET}/app/"
    stores = {"local": (["--cache-dir", folder], {}), "S3": (["--cache-dir", url], s3_env(link))}
    _run(args + stores["local"][0], work, {})
    copy_entries(folder, direct, url)
    times: dict[str, list[float]] = {name: [] for name in stores}
    read_mb = 0.0
    for round_ in range(reps):
        for name in sorted(stores, reverse=bool(round_ % 2)):  # alternating which goes first
            extra, warm_env = stores[name]
            seconds, output = _run(args + extra, work, warm_env)
            found = _READ.search(output)
            if not found or found.group(2) != "0":
                raise RuntimeError(f"the warm main.py run on {name} missed the cache:\n{output[-2000:]}")
            times[name].append(seconds)
            if name == "S3":
                read_mb = float(found.group(3))
    return {"local": statistics.median(times["local"]), "S3": statistics.median(times["S3"]), "read_mb": read_mb,
            "runs": reps, "chapter": args[-1] if quick else "all"}
