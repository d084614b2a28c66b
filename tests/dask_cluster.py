"""A Dask ``LocalCluster`` in a process of its own, for the tests: its workers are processes,
it listens on 127.0.0.1 only, with no dashboard. The test process itself starts no Dask thread.

    python tests/dask_cluster.py WORKERS    # prints the scheduler's address; serves until stdin closes

The workers are spawned with this process's environment, so the test chooses what they see
(credentials, PYTHONPATH: they import main.py).
"""

from __future__ import annotations

import importlib
import sys

from distributed import Client, LocalCluster


def main() -> None:
    with LocalCluster(processes=True, n_workers=int(sys.argv[1]), threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        with Client(cluster) as client:  # ready as a cluster in use is: main.py and numpy imported
            client.run(importlib.import_module, "main")
        print(cluster.scheduler_address, flush=True)
        sys.stdin.read()


if __name__ == "__main__":  # the workers are spawned: they import this file again
    main()
