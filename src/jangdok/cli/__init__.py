"""The ``jangdok`` command: inspect, verify and clean a cache, and run a local S3 server.

    jangdok [--cache LOCATION] [--json] [--debug] COMMAND ...   (the options also after COMMAND)

Every command works on a local folder, an S3 location or a tiered cache, taken from
``--cache`` or from the environment and ``.env`` files as the library reads them (``CACHE_DIR``
and the rest). Built on argparse: it is in the standard library, so the command costs no
dependency and behaves the same wherever Python does, and its subcommands, help and usage
errors are all this needs.

Exit status: 0 success; 1 an error (one line on stderr, a traceback only with ``--debug``);
2 a usage error; 3 problems found (``verify`` or ``stat`` met damaged or untrusted entries,
``doctor`` a failing check); 4 a key that is not there; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .. import __version__
from ..console import Console, Interrupts, parse_duration, parse_size
from ..errors import JangdokError
from .changing import cmd_prune, cmd_rm
from .context import (
    ERROR_TYPES,
    EXIT_ERROR,
    EXIT_MISSING,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    Context,
    Failure,
    Parser,
    UsageError,
    as_json,
    option,
    tcp_port,
)
from .environment import cmd_doctor, cmd_server
from .inspecting import cmd_get, cmd_ls, cmd_stat, cmd_stats, cmd_verify

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_PROBLEMS", "EXIT_MISSING"]

# -- the command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="jangdok", description="Inspect, verify and clean a jangdok cache; run a local S3 server.",
        epilog="Exit status: 0 ok, 1 error, 2 usage, 3 problems found (verify, stat, doctor), 4 missing key, "
               "130 interrupted (143 on SIGTERM).")
    parser.add_argument("--version", action="version", version=f"jangdok {__version__}")

    def options(target: argparse.ArgumentParser, default: Any) -> None:
        # Before or after the command; after it, a default must not undo what came before.
        target.add_argument("--cache", metavar="LOCATION", default=default,
                            help="a folder, s3://bucket/prefix/ (default: CACHE_DIR from the environment or .env)")
        target.add_argument("--json", action="store_true", default=default, help="print one JSON document for scripts")
        target.add_argument("--debug", action="store_true", default=default, help="show tracebacks and jangdok's log")

    options(parser, None)
    parser.set_defaults(json=False, debug=False)
    common = Parser(add_help=False)
    options(common, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, handler: Callable[[Context], int]) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=summary, description=summary)
        sub.set_defaults(handler=handler)
        return sub

    ls = command("ls", "list entries with size and age (--long: tier, format, signature)", cmd_ls)
    ls.add_argument("prefix", nargs="?", default="", help="only keys starting with this")
    ls.add_argument("-l", "--long", action="store_true", help="also read each header: tier, format, signer")
    ls.add_argument("--sort", choices=("name", "size", "age"), default="name")
    ls.add_argument("-r", "--reverse", action="store_true")
    show = command("stat", "show one entry's header, metadata and checksum", cmd_stat)
    show.add_argument("key")
    get = command("get", "load one entry and summarise it, or write it to a file", cmd_get)
    get.add_argument("key")
    get.add_argument("-o", "--output", metavar="FILE", help="write the value here")
    get.add_argument("--format", choices=("pickle", "npy", "json"), default="pickle",
                     help="how to write it (default: a plain pickle)")
    rm = command("rm", "remove entries (asks first; --yes to skip)", cmd_rm)
    rm.add_argument("keys", nargs="*")
    rm.add_argument("--prefix", help="remove every entry under this prefix")
    rm.add_argument("-y", "--yes", action="store_true", help="do not ask")
    prune = command("prune", "remove expired, old or excess entries and crash leftovers (asks first)", cmd_prune)
    prune.add_argument("--older-than", metavar="AGE", type=option(parse_duration),
                       help="entries written longer ago than this, e.g. 30d, 12h, 90m (a unit is required)")
    prune.add_argument("--max-size", metavar="SIZE", type=option(parse_size),
                       help="keep the newest entries within this, e.g. 5GB, 500MB (a unit is required)")
    prune.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    prune.add_argument("-y", "--yes", action="store_true", help="do not ask")
    verify = command("verify", "check every entry's checksum (and signature) without loading it", cmd_verify)
    verify.add_argument("prefix", nargs="?", default="")
    verify.add_argument("--delete", action="store_true", help="delete the damaged entries found")
    command("stats", "entries and bytes per tier", cmd_stats)
    command("doctor", "check configuration, credentials and permissions (as test_s3_cache.py)", cmd_doctor)
    server = command("server", "run a SeaweedFS S3 server on 127.0.0.1 for development", cmd_server)
    server.add_argument("--dir", help="keep its data here (default: a temporary folder, removed on exit)")
    server.add_argument("--port", type=option(tcp_port), help="the S3 port (default: a free one)")
    server.add_argument("--bucket", default="jangdok", help="the bucket to create (default: jangdok)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status.

    The first Ctrl-C (or SIGTERM) stops the command where it is, which then cleans up (a file
    half written is removed) and says so in one line; any later one is ignored until it is done.
    Called without ``argv`` this is the process's entry (the ``jangdok`` script, ``python -m
    jangdok``): Ctrl-C then stays ignored once it returns, as the process only shuts down
    (joining threads, closing connections), where an interrupt could only print a traceback.
    Called with ``argv``, it restores the caller's signal handlers.
    """
    console = Console()
    with Interrupts(then_ignore_ctrl_c=argv is None) as interrupts:
        try:
            return _run(argv, console, interrupts)
        except KeyboardInterrupt:  # the first one came as the command was closing its cache
            console.problem("jangdok: interrupted")
            return interrupts.status


def _drop_stdout() -> None:
    """Send what is left for stdout nowhere: its reader has gone (``jangdok ls | head``), and
    Python would otherwise complain again when it flushes stdout at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _run(argv: Sequence[str] | None, console: Console, interrupts: Interrupts) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    wants_json = "--json" in arguments  # before parsing, so that a usage error gets its document too
    ctx: Context | None = None

    def failed(kind: str, message: str, status: int, shown: str | None = None) -> int:
        """One line on stderr (``shown``, else the message) and, for scripts, one JSON document
        on stdout, unless the command already printed its own."""
        console.problem(shown or f"jangdok: {message}")
        if wants_json and not (ctx is not None and ctx.emitted):
            try:
                console.line(as_json({"error": {"type": kind, "message": message, "exit": status}}))
            except BrokenPipeError:  # nobody reads stdout any more: the status still says it
                _drop_stdout()
        return status

    try:
        args = build_parser().parse_args(arguments)
        wants_json = args.json
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                            format="jangdok: %(levelname)s: %(message)s")
        if not args.debug:
            logging.getLogger("botocore").setLevel(logging.WARNING)
        ctx = Context(args, console)
        return args.handler(ctx)
    except UsageError as exc:
        console.problem(exc.usage.rstrip())
        return failed("UsageError", str(exc), EXIT_USAGE, shown=str(exc))
    except Failure as exc:
        return failed(ERROR_TYPES.get(exc.status, "CommandError"), str(exc), exc.status)
    except JangdokError as exc:
        status = failed(type(exc).__name__, str(exc), EXIT_ERROR, shown=f"jangdok: error: {exc}")
        if ctx is not None and ctx.args.debug:
            raise
        return status
    except KeyboardInterrupt:
        return failed(ERROR_TYPES[interrupts.status], "interrupted", interrupts.status)
    except BrokenPipeError:  # `jangdok ls | head`
        _drop_stdout()
        return EXIT_OK
    except Exception as exc:  # a bug: the traceback follows, and a script still gets its document
        if wants_json and not (ctx is not None and ctx.emitted):
            console.line(as_json({"error": {"type": type(exc).__name__, "message": str(exc), "exit": EXIT_ERROR}}))
        raise
    finally:
        if ctx is not None:
            ctx.close()
