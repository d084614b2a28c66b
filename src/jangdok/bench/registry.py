"""Every tool by name, and what each jangdok figure is compared with."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

from .ceilings import LocalCeiling, MemoryCeiling, S3Ceiling
from .jangdok_tools import JangdokLocal, JangdokS3
from .link_tools import Boto3Transfer, LinkCeiling, ObstoreParallel, S3fsParallel
from .peers import Diskcache, Joblib, Obstore, RawPickle, S3fs
from .seed import SeedLocal, SeedS3
from .tools import Context, Op, Tool

TOOLS: dict[str, Callable[[Context], Tool]] = {
    "jangdok local": JangdokLocal,
    "jangdok local mmap": lambda ctx: JangdokLocal(ctx, mmap=True),
    "jangdok S3": JangdokS3,
    "seed local": SeedLocal,
    "seed S3": SeedS3,
    "pickle": RawPickle,
    "joblib": Joblib,
    "diskcache": Diskcache,
    "s3fs": S3fs,
    "obstore": Obstore,
    "ceiling memory": MemoryCeiling,
    "ceiling local": LocalCeiling,
    "ceiling S3": S3Ceiling,
}

# What each jangdok figure is compared with: (seed op, ceiling op, peer ops), as "tool|store|operation".
COMPARISONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "jangdok|local|save": ("seed|local|save", "ceiling|local|disk write", ("joblib|local|dump", "diskcache|local|set")),
    "jangdok|local|load": ("seed|local|load", "ceiling|local|page-cache read",
                           ("joblib|local|load", "diskcache|local|get")),
    "jangdok|local|load mmap": ("seed|local|load", "ceiling|local|page-cache read",
                                ("joblib|local|load mmap_mode=r",)),
    "jangdok|S3|save": ("seed|S3|save", "ceiling|S3|raw PUT", ("s3fs|S3|write", "obstore|S3|put")),
    "jangdok|S3|load": ("seed|S3|load", "ceiling|S3|raw GET", ("s3fs|S3|read", "obstore|S3|get")),
}

# Through the shaped link (:mod:`.linkbench`): jangdok, the seed, the link's own ceiling, and the
# peers' parallel paths.
LINK_TOOLS: dict[str, Callable[[Context], Tool]] = {
    "jangdok S3": JangdokS3,
    "seed S3": SeedS3,
    "ceiling link": LinkCeiling,
    "boto3 transfer": Boto3Transfer,
    "s3fs parallel": S3fsParallel,
    "obstore parallel": ObstoreParallel,
}
LINK_PEERS = {"load": ("boto3|S3|download_fileobj", "s3fs|S3|cat_file", "obstore|S3|get_range, threads"),
              "save": ("boto3|S3|upload_fileobj", "s3fs|S3|pipe_file", "obstore|S3|put multipart")}
LINK_COMPARISONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "jangdok|S3|save": ("seed|S3|save", "ceiling|S3|parallel PUT", LINK_PEERS["save"]),
    "jangdok|S3|load": ("seed|S3|load", "ceiling|S3|parallel GET", LINK_PEERS["load"]),
}


def make_tool(name: str, ctx: Context) -> Tool | None:
    """The tool, or ``None`` (with a note) when it is a peer whose library is not installed:
    the test extra runs the quick benchmark without the peers; ``jangdok[bench]`` brings them."""
    try:
        return (TOOLS | LINK_TOOLS)[name](ctx)
    except ImportError as exc:
        print(f"note: {name} skipped: {exc.name} is not installed (pip install \"jangdok[bench]\")",
              file=sys.stderr, flush=True)
        return None


def build_ops(ctx: Context, only: str | None = None,
              tools: Mapping[str, Callable[[Context], Tool]] = TOOLS) -> list[Op]:
    """The operations of ``tools`` (or only of the one named, looked up in every registry)."""
    names = [only] if only is not None else list(tools)
    ops = []
    for name in names:
        tool = make_tool(name, ctx)
        for op in tool.ops() if tool is not None else []:
            op.maker = name
            ops.append(op)
    return ops
