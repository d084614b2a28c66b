"""The issue's fork scenario, as a user would run it: does a forked child ever load another
key's value?

    python benchmarks/fork_crossing.py [--loads 200] [--method fork]

Starts its own SeaweedFS (tests/seaweed.py, loopback only), saves 8 same-sized entries under
one prefix with the path-level functions, calls ``exists`` once so the parent holds a kept-alive
connection, then starts 8 children that each load their own key ``--loads`` times. To see the
bug this guards against, run it with ``PYTHONPATH`` pointing at an older jangdok's ``src``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from seaweed import credentials_env, start_seaweed  # noqa: E402

BUCKET = "fork-crossing"
CHILDREN = 8


def load_own_key(path: str, loads: int, results: multiprocessing.Queue) -> None:
    import jangdok

    wrong = errors = 0
    for _ in range(loads):
        try:
            wrong += jangdok.load(path) != {"path": path, "pad": b"x" * 4096}
        except Exception:  # counted, not raised: the tally is the result
            errors += 1
    results.put((wrong, errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=200)
    parser.add_argument("--method", choices=["fork", "forkserver", "spawn"], default="fork")
    args = parser.parse_args()
    server = start_seaweed(Path(tempfile.mkdtemp(prefix="fork-crossing-")))
    try:
        os.environ.update(credentials_env(server), JANGDOK_FALLBACK="0")
        server.client().create_bucket(Bucket=BUCKET)
        import jangdok

        paths = [f"s3://{BUCKET}/prefix/entry-{index}.pkl" for index in range(CHILDREN)]
        for path in paths:
            jangdok.save(path, {"path": path, "pad": b"x" * 4096})
        jangdok.exists(paths[0])
        context = multiprocessing.get_context(args.method)
        results = context.Queue()
        children = [context.Process(target=load_own_key, args=(path, args.loads, results)) for path in paths]
        for child in children:
            child.start()
        tallies = [results.get(timeout=300) for _ in children]
        for child in children:
            child.join(timeout=60)
        wrong, errors = (sum(column) for column in zip(*tallies, strict=True))
        print(f"{args.method}: {wrong} wrong values and {errors} errors in {CHILDREN * args.loads} loads")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
