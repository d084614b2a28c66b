"""Every tool by name, and what each jangdok figure is compared with."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .ceilings import LocalCeiling, MemoryCeiling, S3Ceiling
from .jangdok_tools import JangdokLocal, JangdokS3
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


def make_tool(name: str, ctx: Context) -> Tool | None:
    """The tool, or ``None`` (with a note) when it is a peer whose library is not installed:
    the test extra runs the quick benchmark without the peers; ``jangdok[bench]`` brings them."""
    try:
        return TOOLS[name](ctx)
    except ImportError as exc:
        print(f"note: {name} skipped: {exc.name} is not installed (pip install \"jangdok[bench]\")",
              file=sys.stderr, flush=True)
        return None


def build_ops(ctx: Context, only: str | None = None) -> list[Op]:
    tools = [make_tool(name, ctx) for name in TOOLS if only is None or only == name]
    return [op for tool in tools if tool is not None for op in tool.ops()]


def tool_of(op: Op) -> str:
    """The TOOLS name that builds ``op``."""
    if op.tool in ("jangdok", "seed", "ceiling"):
        suffix = " mmap" if op.name == "load mmap" else ""
        return f"{op.tool} {op.store}{suffix}"
    return op.tool
