"""jangdok against the seed's approach, its peers and the hardware ceilings, side by side.

    python -m jangdok.bench [--quick] [--reps N] [--no-giant] [--no-link] [--out docs/performance.md]

Starts its own SeaweedFS on 127.0.0.1 (:mod:`jangdok.server`; needs the ``bench`` extra) and a
scratch folder, then in one run times save and load of a BIG value (300 float64 arrays of
30x675, about 48.6 MB pickled) and a SMALL one (a dict of a few KB) for:

* jangdok ``Cache`` on a local folder, with ``mmap=True``, and on S3;
* the seed's approach written out (pickle to ``.tmp`` + ``os.replace``; ``put_object`` /
  ``head_object`` + ``get_object``), the baseline every jangdok figure is a ratio to;
* peers: joblib, diskcache (local); s3fs, obstore (S3); raw pickle in memory;
* ceilings: memory copy, page-cache read, disk write, raw GET and PUT of the pickled bytes.

Then, unless ``--no-link``, the same through a shaped link (:mod:`.link`: 20 ms RTT, 25 MB/s per
connection, 200 MB/s in total by default, ``--link-rtt`` and the like to change them): first the
link's own ceiling (parallel ranged GETs and multipart PUT parts with plain boto3), then jangdok,
the seed's approach and the peers' parallel paths (boto3's transfer manager, s3fs, obstore) as
ratios to it; the 1 GB value; 1,000 SMALL hits with ``get_many`` and one at a time; boto3 against
obstore on small GETs; ``main.py``'s warm run on S3 through the link against its local one.

How it measures (also printed, and written to the report):

* median of ``--reps`` timed rounds (>= 7; ``--quick``: 2, small sizes) after one warm-up round;
  within a round every (tool, operation) runs once, in a new seeded random order each round;
* before each timed operation the previous result is dropped (``del`` + ``gc.collect()``, outside
  the timer), so every load allocates into a heap from which a value of the same size was just
  freed: the steady state of a long-running process. A first load in a fresh process (new pages,
  page faults) is measured separately, once per (tool, operation), in a subprocess;
* that subprocess also measures the peak RSS increase of the single operation (peak RSS before
  and after, see :func:`.fresh.peak_rss`; for loads, before = a process with nothing loaded);
* S3 requests per operation are counted with botocore ``before-send`` hooks (jangdok through
  ``cache.store.client``); s3fs and obstore, which have their own HTTP clients, through a
  loopback counting proxy in a separate untimed pass.

This package is not imported by ``import jangdok``. Its modules, by role:

* :mod:`.values`: the values saved and loaded (BIG, SMALL, GIANT) and how to compare them;
* :mod:`.tools`: what a tool is (:class:`~.tools.Tool`, :class:`~.tools.Op`) and where it keeps data;
* :mod:`.jangdok_tools`, :mod:`.seed`, :mod:`.peers`, :mod:`.ceilings`: the tools, by role, and
  :mod:`.registry`, which lists them and what each jangdok figure is compared with;
* :mod:`.link`: a shaped link, a loopback proxy in front of the S3 server that adds a round trip
  and limits bandwidth like a network (and counts requests);
* :mod:`.link_tools`, :mod:`.linkbench`, :mod:`.apprun`, :mod:`.linkreport`: the link section's
  ceiling and peers, its measurements, ``main.py``'s warm runs, its targets and report;
* :mod:`.measure`: timed rounds, heap and disk control, request counts;
* :mod:`.fresh`: one operation in a fresh process (first-run time, peak RSS);
* :mod:`.report`: the table, the targets, the markdown report;
* :mod:`.main`: the command line.
"""

from __future__ import annotations

from .main import main

__all__ = ["main"]
