"""Commands about where a cache runs: doctor (does the configuration work?) and server (a
local S3 server for development)."""

from __future__ import annotations

import secrets
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..console import StopSignals
from .context import (
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    Context,
    Failure,
)


def cmd_doctor(ctx: Context) -> int:
    from ..doctor import run_checks

    marks = {"ok": ("✅", "ok"), "note": ("⚠️", "note"), "fail": ("❌", "fail"), "info": ("  ", "dim")}
    findings = []
    for finding in run_checks(**({"cache_dir": ctx.args.cache} if ctx.args.cache else {})):
        findings.append(finding)
        if ctx.args.json:
            continue
        mark, style = marks[finding.status]
        ctx.console.line(f"{mark} {ctx.console.paint(finding.message, style)}")
        for extra in (finding.error, finding.fix and f"→ fix: {finding.fix}"):
            if extra:
                ctx.console.line(f"   {extra}")
    failures = sum(finding.status == "fail" for finding in findings)
    if ctx.args.json:
        ctx.emit({"failures": failures, "findings": [asdict(finding) for finding in findings]})
    elif failures:
        ctx.console.line(ctx.console.paint(f"{failures} check(s) failed", "fail"))
    else:
        ctx.console.line(ctx.console.paint("every configured cache store works", "ok"))
    return EXIT_PROBLEMS if failures else EXIT_OK


# -- the development server ------------------------------------------------------------------


def cmd_server(ctx: Context) -> int:
    """Whatever happens, stopping the command stops everything it started: signals only set a
    flag (see StopSignals), which the startup wait and the serving loop both watch."""
    from ..server import ADMIN_ACTIONS, Identity, Interrupted, ServerError, launch_seaweed

    args = ctx.args
    if args.port is not None:
        _check_port_free(args.port)
    keep = args.dir is not None
    # Keys of this server only, made anew each start: nothing to leak from a printed export.
    identity = Identity("jangdok-dev", "JDK" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30), ADMIN_ACTIONS)
    with StopSignals() as stop:
        workdir = Path(args.dir) if keep else Path(tempfile.mkdtemp(prefix="jangdok-server-"))
        try:
            server = launch_seaweed(workdir, port=args.port, access_keys=[identity])
            try:
                ctx.console.problem(f"starting SeaweedFS (pid {server.pid}) in {workdir}; Ctrl-C stops it")
                server.wait_ready(stop)
                _ensure_bucket(server, args.bucket)
                if stop():
                    raise Interrupted("stopped before the server was announced")
                _announce(ctx, server, workdir, args.bucket)
                while not stop():
                    if server.process.poll() is not None:
                        raise Failure(f"the server exited by itself ({server.process.returncode}); "
                                      f"its log is {workdir / 'weed.log'}")
                    time.sleep(0.2)
            finally:
                server.stop()
        except Interrupted as exc:
            status = 128 + (stop.received or signal.SIGINT)
            raise Failure("interrupted: the server was stopped while starting", status) from exc
        except ServerError as exc:
            raise Failure(f"SeaweedFS could not start: {exc}") from exc
        except OSError as exc:
            raise Failure(f"cannot run the server in {workdir}: {exc.strerror or exc}") from exc
        finally:
            if not keep:
                import shutil

                shutil.rmtree(workdir, ignore_errors=True)
    ctx.console.problem("server stopped")
    return EXIT_OK


def _check_port_free(port: int) -> None:
    """Refuse a port something already listens on: the readiness probe would otherwise talk to
    that other program until the startup deadline. (A check before the start, so a program
    taking the port in between is still met by that deadline.)"""
    import socket

    probe = socket.socket()
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as weed does: a port in TIME_WAIT is free
        probe.bind(("127.0.0.1", port))
    except OSError as exc:
        raise Failure(f"port {port} on 127.0.0.1 is not free ({exc.strerror or exc}); choose another --port",
                      EXIT_USAGE) from exc
    finally:
        probe.close()


def _ensure_bucket(server: Any, bucket: str) -> None:
    """The bucket to serve, created unless a ``--dir`` used before already holds it."""
    try:
        server.ensure_bucket(bucket, server.client(connect_timeout=2, read_timeout=10))
    except Exception as exc:  # botocore's errors, for a name S3 refuses: one line, not a traceback
        raise Failure(f"cannot create bucket {bucket!r}: {exc}") from exc


def _announce(ctx: Context, server: Any, workdir: Path, bucket: str) -> None:
    access_key, secret_key = server.identity
    exports = {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": access_key,
               "AWS_SECRET_ACCESS_KEY": secret_key, "AWS_DEFAULT_REGION": "us-east-1",
               "CACHE_DIR": f"s3://{bucket}/cache/"}
    if ctx.args.json:
        ctx.emit({"pid": server.pid, "workdir": str(workdir), "exports": exports})
    else:
        ctx.console.problem(f"SeaweedFS S3 server on {server.endpoint} (pid {server.pid}, data in {workdir}). "
                            "In another shell:")
        for name, value in exports.items():
            ctx.console.line(f"export {name}={value}")
    sys.stdout.flush()


