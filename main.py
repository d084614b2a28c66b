"""Chapter generator: per-label sign-language sequences, cached in CACHE_DIR, then one small
classifier per chapter.

    python main.py                                   # local cache folder "cache"
    CACHE_DIR=s3://bucket/cache/ python main.py      # shared cache on S3
    python main.py --chapter 음식 --data-dir /path/to/landmarks -q
    python main.py --workers 4                       # compute missing labels on 4 processes
    python main.py --scheduler tcp://host:8786       # ... on a Dask cluster (pip install 'jangdok[cluster]')

Each label's processed sequences are cached under a name that encodes the parameters
(``김치_seq30_aug9_maxNone_min10.pkl``); the entry also records the full parameters and the
source videos, and a mismatch invalidates it.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # One BLAS thread: the model is small, and a busy second core makes threaded BLAS much
    # slower. Set before numpy is imported; an explicit setting in the environment still wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import importlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import config  # noqa: E402
import engines  # noqa: E402
from chapter_generator import (  # noqa: E402
    PipelineParams,
    build_chapter_dataset,
    cache_file_name,
    ensure_sample_dataset,
    label_rng,
    load_chapters,
    load_labels,
    params_fingerprint,
    process_label,
    safe_label,
    save_model,
    save_model_info,
    train_chapter,
)
from jangdok import BatchError, Cache, Entry, EntryInfo, JangdokError, Stats, TierStats  # noqa: E402
from jangdok.console import Interrupts  # noqa: E402

# tqdm's monitor is a thread that lives on once a bar was made (even a hidden one): the process
# pool of --workers must fork a process without threads.
tqdm.monitor_interval = 0

STORE_NAMES = {"S3": "S3", "local": "로컬", "local (fallback)": "로컬 대체", "local tier": "로컬 사본"}


QUIET = False

# A label's lines while a worker extracts it (per thread: a Dask worker may run several at
# once), sent back for the main process to print: (shown with -q, text).
_collected = threading.local()


def say(message: str) -> None:
    """Print a progress line (not with -q), without breaking the progress bar."""
    lines = getattr(_collected, "lines", None)
    if lines is not None:
        lines.append((False, message))
    elif not QUIET:
        tqdm.write(message, file=sys.stdout)


def warn(message: str) -> None:
    """Print a line that -q does not hide."""
    lines = getattr(_collected, "lines", None)
    if lines is not None:
        lines.append((True, message))
    else:
        tqdm.write(message, file=sys.stdout)


class TransferBar:
    """A progress bar for one cache transfer, shown only for entries of 32 MB or more (smaller
    ones finish before a bar would be read)."""

    THRESHOLD = 32 * 1024 * 1024

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if QUIET or total < self.THRESHOLD or getattr(_collected, "lines", None) is not None:
                return  # a worker draws no bar: the main process's output is the only one
            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=self.description, leave=False,
                            file=sys.stdout)
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> TransferBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()


class LoadBar:
    """One progress bar for a batch load, in bytes, on a terminal's stderr (as the labels bar).
    Its total grows as the entries begin to arrive."""

    def __init__(self, description: str, shown: bool) -> None:
        self.bar = tqdm(total=0, unit="B", unit_scale=True, desc=description, leave=False, disable=not shown)

    def __call__(self, done: int, total: int) -> None:
        if self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> LoadBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.close()


class CacheEventPrinter(logging.Handler):
    """Shows jangdok's warnings as the program's own lines, in the seed's wording."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "jangdok_event", None) == "corrupt_deleted":
            warn(f"🗑️ 손상된 캐시 파일 삭제: {record.jangdok_path}")
        else:
            warn(f"⚠️ {record.getMessage()}")


@dataclass
class RunTally:
    """What the cache's own statistics cannot know: entries whose parameters no longer match."""

    invalidated: int = 0
    seconds_computing: float = 0.0
    cache_stats: dict[str, TierStats] = field(default_factory=dict)
    overlapped: dict[str, float] = field(default_factory=dict)
    """Per store, the reading seconds the batch load counted beyond its own duration: its loads
    ran side by side, each counting its own time."""


def params_from_config() -> PipelineParams:
    """PipelineParams from config.py: each field whose upper-case name config defines."""
    names = (field.name for field in dataclasses.fields(PipelineParams))
    return PipelineParams(**{name: getattr(config, name.upper()) for name in names if hasattr(config, name.upper())})


def cache_identity(label: str, videos: list[Path], params: PipelineParams, data_dir: Path) -> dict[str, Any]:
    """What a cached entry must have been computed from to be reused."""
    return {
        "label": label,
        "params": params_fingerprint(params),
        "videos": [[path.relative_to(data_dir).as_posix(), path.stat().st_size] for path in videos],
    }


# What the original chapter generator recorded with each label cache, in its own names.
ORIGINAL_PARAMETERS = ("TARGET_SEQ_LENGTH", "AUGMENTATIONS_PER_VIDEO", "AUGMENTATION_NOISE_LEVEL",
                       "AUGMENTATION_SCALE_RANGE", "AUGMENTATION_ROTATION_RANGE", "NONE_CLASS_NOISE_LEVEL",
                       "NONE_CLASS_AUGMENTATIONS_PER_FRAME", "LABEL_MAX_SAMPLES_PER_CLASS", "MIN_SAMPLES_PER_CLASS")


def original_parameters(params: PipelineParams) -> dict[str, Any]:
    return {name: getattr(params, name.lower()) for name in ORIGINAL_PARAMETERS}


def pickled_identity(value: Any, params: PipelineParams) -> dict[str, Any] | None:
    """The identity a plain pickle keeps in its value: the original program's
    ``{"data": [...], "parameters": {TARGET_SEQ_LENGTH: ..., ...}}`` counts as ours when every
    one of its parameters matches; earlier versions of this program wrote ``"params"``."""
    if isinstance(value, dict) and isinstance(value.get("parameters"), dict):
        same = value["parameters"] == original_parameters(params)
        return {"params": params_fingerprint(params) if same else value["parameters"]}
    if isinstance(value, dict) and "params" in value:
        return {"params": value["params"]}
    return None


def matches(stored: dict[str, Any] | None, expected: dict[str, Any]) -> bool:
    if not stored or stored.get("params") != expected["params"]:
        return False
    # Plain pickles from the original program recorded parameters only, not their videos.
    return "videos" not in stored or stored["videos"] == expected["videos"]


def usable(info: EntryInfo, expected: dict[str, Any]) -> bool:
    """Whether an entry may be reused, by its metadata. Plain pickles keep their parameters in
    the value: they pass here and are judged once loaded (see :func:`reuse`)."""
    return info.metadata is None or matches(info.metadata, expected)


def load_all(cache: Cache, keys: list[str], tally: RunTally) -> tuple[dict[str, Entry], set[str]]:
    """The entries of ``keys`` that exist, loaded together (one progress bar for all), and the
    keys looked for: a key whose load failed was not (it is tried again on its own)."""
    before = cache.stats()
    started = time.perf_counter()
    with LoadBar("📦 labels", not QUIET and sys.stderr.isatty()) as bar:
        try:
            return cache.get_entries(keys, progress=bar), set(keys)
        except BatchError as exc:
            return exc.results, set(keys) - set(exc.errors)
        except JangdokError:  # not one key's: each label meets it again on its own, and says so
            return {}, set()
        finally:
            spent = {name: store.seconds_reading - (before[name].seconds_reading if name in before else 0.0)
                     for name, store in cache.stats().items()}
            # The summary says how long reading took: the batch's own duration, shared by store.
            beyond = 1 - (time.perf_counter() - started) / max(sum(spent.values()), 1e-9)
            tally.overlapped = {name: seconds * beyond for name, seconds in spent.items()} if beyond > 0 else {}


def load_or_build(label: str, videos: list[Path], params: PipelineParams, data_dir: Path,
                  cache: Cache | None, tally: RunTally, looked: bool = False,
                  found: Entry | None = None) -> list[np.ndarray]:
    """The label's sequences from the cache, or computed and saved. Several machines running
    the pipeline on one CACHE_DIR compute each label once: the others wait for its entry.
    ``looked``: the cache was just asked for the label's entry (see :func:`load_all`), which
    is ``found`` (``None``: missing); it is judged here, not asked for again."""
    expected = cache_identity(label, videos, params, data_dir)
    key = cache_file_name(label, params)
    built: list[list[np.ndarray]] = []

    def build() -> list[np.ndarray]:
        started = time.perf_counter()
        sequences = process_label(videos, params, label_rng(label, params))
        tally.seconds_computing += time.perf_counter() - started
        built.append(sequences)
        return sequences

    if cache is None:
        return build()
    accepted: list[EntryInfo] = []  # the last is the entry get_or_compute loaded, if it loaded one
    refused: list[EntryInfo] = []

    def accept(info: EntryInfo) -> bool:
        judged = usable(info, expected)
        (accepted if judged else refused).append(info)
        return judged

    def fetch() -> Any:
        nonlocal found
        if found is not None:
            batched, found = found, None
            if accept(batched.info):
                return batched.value
        with TransferBar(f"📦 {label}") as bar:
            return cache.get_or_compute(key, build, metadata=expected, progress=bar, accept=accept, missed=looked)

    for _ in range(2):  # a second time only after removing a plain pickle of other parameters
        saves = sum(tier.puts for tier in cache.stats().values())
        try:
            value = fetch()
        except JangdokError as exc:
            warn(f"⚠️ {label} 캐시를 사용하지 못했습니다 (캐시 없이 계산합니다): {exc}")
            return built[0] if built else build()
        if built:  # computed here, whatever the cache held before
            if refused:
                warn(f"⚠️ {label} 캐시 파라미터가 다릅니다. 캐시 무효화.")
                tally.invalidated += 1
            if sum(tier.puts for tier in cache.stats().values()) > saves:  # else the library said why
                say(f"💾 {label} 라벨 데이터 캐시 저장 ({STORE_NAMES[cache.store_label]}): "
                    f"{cache.store.path(key)} ({len(value)}개 샘플)")
            return value
        info = accepted[-1]
        sequences = reuse(label, value, info, expected, params)
        if sequences is not None:
            say(f"📂 {label} 라벨 데이터 캐시 로드 ({STORE_NAMES[info.store]}): {info.path} ({len(sequences)}개 샘플)")
            return sequences
        warn(f"⚠️ {label} 캐시 파라미터가 다릅니다. 캐시 무효화.")
        tally.invalidated += 1
        try:
            cache.delete(key)
        except JangdokError as exc:
            warn(f"⚠️ {label} 캐시를 삭제하지 못했습니다: {exc}")
            return build()
    return build()


def reuse(label: str, value: Any, info: EntryInfo, expected: dict[str, Any],
          params: PipelineParams) -> list[np.ndarray] | None:
    """The sequences in a loaded entry, or ``None`` for a plain pickle of other parameters.
    Entries with metadata were judged before loading."""
    if info.metadata is not None:
        return value
    if isinstance(value, list):
        # The original program's oldest layout recorded nothing to check it against.
        warn(f"⚠️ {label} 캐시는 파라미터 기록이 없는 옛 형식입니다. 검증 없이 사용합니다: {info.path}")
        return value
    return value["data"] if matches(pickled_identity(value, params), expected) else None


# -- other processes (--workers) and a Dask cluster (--scheduler) ----------------------------
# The main process loads the labels found in the cache and sends the others out, one label a
# task; each is extracted through load_or_build, as here, so the cache's leases still make
# every run and machine compute a label once. Training stays in the main process. The engines
# are in engines.py.


@dataclass
class LabelJob:
    """A label to extract in another process: what :func:`load_or_build` needs, by value."""

    label: str
    videos: list[Path]
    params: PipelineParams
    data_dir: Path
    looked: bool
    """The batch load asked for the label's entry (see :func:`load_all`)."""
    refused: EntryInfo | None
    """The entry the batch load found with other parameters: judged, and reported, where the
    label is extracted."""


@dataclass
class LabelDone:
    """A label extracted in another process, with what the main process prints and counts."""

    label: str
    sequences: list[np.ndarray]
    lines: list[tuple[bool, str]]
    """Its lines, in order: (shown with -q, text)."""
    tally: RunTally
    worker: str
    """The cache object that did the work: host, process and object."""
    stats: tuple[int, Stats]
    """That cache's statistics after this label, numbered in the order they were taken. A
    worker's counters include the labels it extracted before (and a Dask worker may extract
    several at once), so its latest statistics are its share of the run."""


_snapshots = itertools.count()
_snapshot_lock = threading.Lock()


def whose(cache: Cache | None) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{id(cache)}"


def extract(job: LabelJob, cache: Cache | None) -> LabelDone:
    """Extract one label in a worker: its lines are kept to send back, not printed."""
    logger = logging.getLogger("jangdok")
    with _snapshot_lock:  # a forked pool process has the main process's printer already
        if not any(isinstance(handler, CacheEventPrinter) for handler in logger.handlers):
            logger.addHandler(CacheEventPrinter())
    tally = RunTally()
    lines: list[tuple[bool, str]] = []
    _collected.lines = lines
    try:
        found = None if job.refused is None else Entry(None, job.refused)
        sequences = load_or_build(job.label, job.videos, job.params, job.data_dir, cache, tally, job.looked, found)
    finally:
        del _collected.lines
    with _snapshot_lock:
        stats = (next(_snapshots), Stats() if cache is None else cache.stats())
    return LabelDone(job.label, sequences, lines, tally, whose(cache), stats)


def label_jobs(labels: list[str], label_videos: dict[str, list[Path]], params: PipelineParams, data_dir: Path,
               keys: dict[str, str], found: dict[str, Entry], looked: set[str]) -> list[LabelJob]:
    """The labels without a usable entry among those found, to be extracted elsewhere."""
    jobs = []
    for label in labels:
        entry = found.get(keys[label])
        if entry is not None and usable(entry.info, cache_identity(label, label_videos[label], params, data_dir)):
            continue
        jobs.append(LabelJob(label, [path.absolute() for path in label_videos[label]], params, data_dir.absolute(),
                             keys[label] in looked, None if entry is None else entry.info))
    return jobs


def _importable() -> ModuleType:
    """This module under a name a Dask worker imports: run as a script it is ``__main__``,
    which a worker cannot import (and cloudpickle would copy by value, thread-locals and all)."""
    if __name__ != "__main__":
        return sys.modules[__name__]
    return importlib.import_module(__spec__.name if __spec__ is not None else Path(__file__).stem)


def elsewhere(address: str | None, count: int, cache: Cache | None,
              jobs: list[LabelJob]) -> contextlib.AbstractContextManager[Iterator[LabelDone]] | None:
    """Where the jobs go: the Dask cluster, the process pool, or nowhere (``None``: this process
    extracts every label, as it always did)."""
    if address is not None and jobs:
        def started(workers: dict[str, int]) -> None:
            say(f"🌐 라벨 {len(jobs)}개를 Dask 클러스터 {address}에서 계산합니다 "
                f"(workers {len(workers)}, threads {sum(workers.values())})")

        return engines.on_cluster(address, _importable().extract, cache, jobs, started)
    if count > 1:
        say(f"🧮 라벨 {len(jobs)}개를 프로세스 {count}개에서 계산합니다 (processes)")
        return engines.on_processes(count, extract, cache, jobs)
    return None


def received(result: LabelDone, tally: RunTally, workers: dict[str, tuple[int, Stats]]) -> list[np.ndarray]:
    """A label extracted elsewhere: its lines printed here, its counts added to the run's (a
    worker's statistics kept if they are its latest); its sequences."""
    for always, line in result.lines:
        (warn if always else say)(line)
    tally.invalidated += result.tally.invalidated
    tally.seconds_computing += result.tally.seconds_computing
    if workers.get(result.worker, (-1,))[0] < result.stats[0]:
        workers[result.worker] = result.stats
    return result.sequences


def combined(cache: Cache, workers: dict[str, tuple[int, Stats]]) -> Stats:
    """The run's cache statistics: this process's and each worker's latest (a worker working on
    this process's own cache object is counted in this process's)."""
    here = whose(cache)
    return cache.stats() + sum((stats for worker, (_, stats) in workers.items() if worker != here), Stats())


def train_and_save(chapter: str, labels: list[str], sequences: dict[str, list[np.ndarray]],
                   videos: dict[str, list[Path]], params: PipelineParams, output_dir: Path) -> dict[str, Any]:
    rng = np.random.default_rng([params.seed, len(chapter), *chapter.encode("utf-8")])
    started = time.perf_counter()
    dataset = build_chapter_dataset({label: sequences[label] for label in labels},
                                    {label: len(videos[label]) for label in labels}, params, rng)
    model, metrics = train_chapter(dataset.X, dataset.y, dataset.class_names, params, rng, groups=dataset.groups)
    folder = output_dir / safe_label(chapter)
    save_model(model, folder / "model.npz")
    save_model_info(model, metrics, folder / "model-info.json")
    result = {
        "chapter": chapter,
        "labels": labels,
        "classes": dataset.class_names,
        "samples": int(len(dataset.y)),
        "train_accuracy": metrics["train_accuracy"],
        "test_accuracy": metrics["test_accuracy"],
        "training_seconds": round(time.perf_counter() - started, 3),
        "model": str(folder / "model.npz"),
    }
    (folder / "chapter_result.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n",
                                                encoding="utf-8")
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train one sign-language classifier per chapter, "
                                                 "caching each label's processed data in CACHE_DIR.")
    parser.add_argument("--chapter", action="append", help="only this chapter (repeatable); default: all")
    parser.add_argument("--cache-dir", help=f"cache folder or s3://bucket/prefix/ (default: {config.CACHE_DIR})")
    parser.add_argument("--data-dir", type=Path, help="landmark data: *.npz, labels.csv, chapters.json "
                                                      "(default: a generated sample dataset)")
    parser.add_argument("--output-dir", type=Path, default=config.OUTPUT_DIR, help="where models are written")
    parser.add_argument("--no-cache", action="store_true", help="compute every label, read and write no cache")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final summary")
    elsewhere = parser.add_mutually_exclusive_group()
    elsewhere.add_argument("--workers", type=positive, metavar="N",
                           help="compute the labels missing from the cache on N processes of this machine "
                                "(default: one per core, no more than the labels to compute; 1: in this process)")
    elsewhere.add_argument("--scheduler", metavar="ADDRESS",
                           help="compute them on the Dask cluster at ADDRESS, e.g. tcp://host:8786 (default: "
                                "$DASK_SCHEDULER_ADDRESS; needs pip install 'jangdok[cluster]')")
    return parser.parse_args(argv)


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def print_summary(tally: RunTally, results: list[dict[str, Any]], elapsed: float) -> None:
    print("\n=== 요약 (summary) ===")
    for result in results:
        accuracy = result["test_accuracy"]
        shown = "n/a" if accuracy is None else f"{accuracy:.3f}"
        print(f"📊 {result['chapter']}: {len(result['classes'])} classes, {result['samples']} samples, "
              f"held-out accuracy {shown}")
    for name, store in tally.cache_stats.items():
        # An entry found with other parameters is a hit for the cache, a miss for this program.
        hits = store.hits - tally.invalidated
        print(f"🗄️ cache ({name}): {hits} hits, {store.misses + tally.invalidated} misses, "
              f"read {store.bytes_read / 1e6:.1f} MB in {store.seconds_reading - tally.overlapped.get(name, 0):.2f} s, "
              f"wrote {store.bytes_written / 1e6:.1f} MB in {store.seconds_writing:.2f} s")
    refused = sum(store.untrusted for store in tally.cache_stats.values())
    if refused:
        print(f"🔒 refused {refused} cache entries whose signature could not be verified (see the warnings)")
    waited = sum(store.seconds_waiting for store in tally.cache_stats.values())
    taken_over = sum(store.lease_takeovers for store in tally.cache_stats.values())
    if waited >= 0.05 or taken_over:
        print(f"🤝 waited {waited:.2f} s for labels other runs were computing"
              + (f"; took over {taken_over} left by runs that died" if taken_over else ""))
    print(f"⚙️ computing label data: {tally.seconds_computing:.2f} s")
    print(f"⏱️ total: {elapsed:.2f} s")


def main(argv: list[str] | None = None) -> int:
    """Run the program; its exit status. The first Ctrl-C (or SIGTERM) stops it where it is:
    it unwinds (a computation's lease is released, a half-written entry removed) and says so
    in one line, exit status 130 (143); a second one while it unwinds is ignored."""
    started = time.perf_counter()
    printer = CacheEventPrinter()  # first: reading the settings may already warn (about .env)
    logging.getLogger("jangdok").addHandler(printer)
    # Run as the program, Ctrl-C stays ignored once main() returns: the process then only shuts
    # down, where a Ctrl-C could only print a traceback.
    with Interrupts(then_ignore_ctrl_c=argv is None) as interrupts:
        try:
            args = parse_args(argv)
            global QUIET
            QUIET = args.quiet
            return run(args, started)
        except (JangdokError, engines.ClusterUnavailable) as exc:  # e.g. S3 unreachable with JANGDOK_FALLBACK=0
            print(f"❌ {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("⛔ interrupted (중단됨)", file=sys.stderr)
            return interrupts.status
        finally:
            logging.getLogger("jangdok").removeHandler(printer)


def run(args: argparse.Namespace, started: float) -> int:
    params = params_from_config()
    data_dir = args.data_dir or config.DATA_DIR
    if args.data_dir is None and ensure_sample_dataset(data_dir):
        say(f"🧪 샘플 데이터 생성: {data_dir}")
    label_videos = load_labels(data_dir)
    chapters = load_chapters(data_dir)
    if args.chapter:
        unknown = [name for name in args.chapter if name not in chapters]
        if unknown:
            print(f"❌ unknown chapter(s): {', '.join(unknown)}; known: {', '.join(chapters)}", file=sys.stderr)
            return 2
        chapters = {name: chapters[name] for name in args.chapter}

    address = engines.scheduler_address(args.scheduler, args.workers)
    tally = RunTally()
    labels = list(dict.fromkeys(label for chapter_labels in chapters.values() for label in chapter_labels))
    sequences: dict[str, list[np.ndarray]] = {}
    workers: dict[str, tuple[int, Stats]] = {}  # each worker's latest statistics
    cache = None if args.no_cache else Cache(args.cache_dir or config.CACHE_DIR)
    try:
        if cache is not None:
            say(f"🗄️ 캐시 위치 (cache): {cache.location.url} ({cache.store_label})")
        keys = {label: cache_file_name(label, params) for label in labels}
        found, looked = load_all(cache, list(keys.values()), tally) if cache is not None else ({}, set())
        jobs = label_jobs(labels, label_videos, params, data_dir, keys, found, looked)
        engine = elsewhere(address, engines.process_count(args.workers, len(jobs)), cache, jobs)
        remote = {job.label for job in jobs} if engine is not None else set()
        # Started first: the pool or the cluster computes while this process loads what it found.
        with (engine or contextlib.nullcontext(iter(())) as done,
              tqdm(total=len(labels), desc="labels", unit="label",
                   disable=args.quiet or not sys.stderr.isatty()) as progress):
            for label in labels:  # in order, wherever each is extracted: the lines come as they always did
                entry = found.pop(keys[label], None)
                if label in remote:
                    sequences[label] = received(next(done), tally, workers)
                else:
                    sequences[label] = load_or_build(label, label_videos[label], params, data_dir, cache, tally,
                                                     keys[label] in looked, entry)
                progress.update()
    finally:
        if cache is not None:
            tally.cache_stats = combined(cache, workers)
            cache.close()

    results = []
    for chapter, chapter_labels in chapters.items():
        result = train_and_save(chapter, chapter_labels, sequences, label_videos, params, args.output_dir)
        say(f"✅ {chapter}: 모델 저장 {result['model']}")
        results.append(result)
    print_summary(tally, results, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
