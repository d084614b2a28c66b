"""A shaped link: a loopback TCP proxy in front of an S3 endpoint that behaves like a network.

Every byte crossing it waits out a one-way delay (half the round-trip time) in each direction,
so a request and its answer pay one RTT more than they would directly, and the first bytes of
a new connection wait one RTT more for the handshake a real link would make. Bytes then leave
as two token buckets allow: the connection's own (``per_connection``, each direction) and the
link's (``total``, each direction, shared by every connection), paced in slices of about 2 ms
so the rate is smooth, not bursts and pauses. It also counts the HTTP requests passing through
(request heads in the client's stream, bodies skipped by their length or chunks), for clients
with their own HTTP stack (s3fs, obstore), where botocore hooks see nothing.

The defaults stand for in-region S3 scaled to a 2-core machine: 20 ms RTT, 25 MB/s per
connection, 200 MB/s in total. ``None`` for a rate (and 0 for the RTT) turns that shaping off.

:class:`Link` runs in a thread of this process (for tests); :class:`LinkProcess` runs one in a
process of its own (for the benchmark, so the proxy's work and its timers never wait for the
measured client's GIL). Both listen on 127.0.0.1 only and close every socket on ``close()``.
"""

from __future__ import annotations

import heapq
import itertools
import json
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

MB = 1e6
_CHUNK = 256 * 1024  # read from a socket at most this much at once
_UNSHAPED_SLICE = 1 << 20
_MAX_LINE = 64 * 1024  # a request head line longer than this is not HTTP/1.1 from an S3 client


# In-region S3 scaled to a 2-core machine (a real connection carries ~85-90 MB/s).
DEFAULT_RTT, DEFAULT_PER_CONNECTION, DEFAULT_TOTAL = 0.020, 25 * MB, 200 * MB


@dataclass(frozen=True)
class Shape:
    """What a link does to the bytes crossing it. Rates are bytes per second, each direction."""

    rtt: float = DEFAULT_RTT
    per_connection: float | None = DEFAULT_PER_CONNECTION
    total: float | None = DEFAULT_TOTAL

    def describe(self) -> str:
        def rate(value: float | None) -> str:
            return "unlimited" if value is None else f"{value / MB:g} MB/s"

        return (f"{self.rtt * 1e3:g} ms RTT, {rate(self.per_connection)} per connection, "
                f"{rate(self.total)} in total (each direction)")


UNSHAPED = Shape(0.0, None, None)


class TokenBucket:
    """``rate`` tokens (bytes) a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.last = burst, time.monotonic()

    def wait(self, size: int, now: float) -> float:
        """Seconds until ``size`` tokens are there (0: now)."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = max(self.last, now)
        return 0.0 if self.tokens >= size else (size - self.tokens) / self.rate

    def take(self, size: int) -> None:
        self.tokens -= size


def _slice(shape: Shape) -> int:
    """The most a pipe sends at once: about 2 ms at the slowest rate that applies to it."""
    rates = [r for r in (shape.per_connection, shape.total) if r is not None]
    if not rates:
        return _UNSHAPED_SLICE
    return int(min(256 * 1024, max(16 * 1024, min(rates) * 0.002)))


def _bucket(rate: float | None, slice_: int) -> TokenBucket | None:
    # A burst of several slices (and >= 5 ms): a wake-up late by the timer's millisecond
    # granularity then finds its tokens saved, not lost.
    return None if rate is None else TokenBucket(rate, max(4 * slice_, rate * 0.005))


class _RequestCounter:
    """Finds the request heads in a client's byte stream, skipping bodies by their
    Content-Length or their chunks. (A request whose body the client never sends, after a
    refused ``Expect: 100-continue``, is not followed: the benchmark's requests succeed.)"""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._line = b""
        self._state = "start"
        self._skip = 0  # body or chunk bytes still to pass over
        self._length = 0
        self._chunked = False

    def feed(self, data: bytes) -> None:
        pos, size = 0, len(data)
        while pos < size:
            if self._skip:
                step = min(self._skip, size - pos)
                pos += step
                self._skip -= step
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self._line = (self._line + data[pos:])[-_MAX_LINE:]
                return
            line, self._line, pos = (self._line + data[pos:end]).rstrip(b"\r"), b"", end + 1
            try:
                self._on_line(line)
            except ValueError:  # a length that is no number: not HTTP as S3 clients speak it
                self._state, self._skip = "start", 0

    def _on_line(self, line: bytes) -> None:
        if self._state == "start":
            if line:  # blank lines between requests are allowed, and are no request
                self.link.count += 1
                self._state, self._length, self._chunked = "headers", 0, False
        elif self._state == "headers":
            if not line:
                self._state = "chunk" if self._chunked else "start"
                self._skip = 0 if self._chunked else self._length
                return
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self._length = int(value.strip() or 0)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked = True
        elif self._state == "chunk":
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size:
                self._skip = size + 2  # the chunk's data and its CRLF
            else:
                self._state = "trailer"
        elif not line:  # the trailer ends with a blank line
            self._state = "start"


class _Pipe:
    """One direction of one connection: bytes read from ``src`` wait out the delay in a queue,
    then go to ``dst`` as fast as the buckets allow."""

    def __init__(self, conn: _Connection, src: socket.socket, dst: socket.socket, delay: float, not_before: float,
                 buckets: list[TokenBucket], slice_: int, counter: _RequestCounter | None) -> None:
        self.conn, self.src, self.dst = conn, src, dst
        self.delay, self.not_before = delay, not_before
        self.buckets, self.slice, self.counter = buckets, slice_, counter
        # What may wait in the queue: what the link holds in flight at full rate, and more.
        rate = min((b.rate for b in buckets), default=None)
        self.cap = (2 << 20) + int(rate * delay if rate is not None else 6 << 20)
        self.queue: deque[list[Any]] = deque()  # [due, memoryview, offset]
        self.queued = 0
        self.eof = False  # src has no more to send
        self.done = False  # and all of it went to dst
        self.blocked = False  # dst's buffer is full: wait for it to be writable
        self.timer: float | None = None

    @property
    def reading(self) -> bool:
        return not self.eof and self.queued < self.cap

    def on_readable(self) -> None:
        try:
            data = self.src.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self.conn.abort()
            return
        now = time.monotonic()
        if not data:
            self.eof = True
        else:
            if self.counter is not None:
                self.counter.feed(data)
            self.queue.append([max(now, self.not_before) + self.delay, memoryview(data), 0])
            self.queued += len(data)
        self.pump()

    def on_writable(self) -> None:
        self.blocked = False
        self.pump()

    def pump(self) -> None:
        now = time.monotonic()
        while self.queue and not self.blocked:
            entry = self.queue[0]
            if entry[0] > now:
                self.conn.link._schedule(self, entry[0])
                break
            view, offset = entry[1], entry[2]
            size = min(len(view) - offset, self.slice)
            wait = max((b.wait(size, now) for b in self.buckets), default=0.0)
            if wait > 0:
                self.conn.link._schedule(self, now + wait)
                break
            try:
                sent = self.dst.send(view[offset:offset + size])
            except BlockingIOError:
                sent = 0
            except OSError:
                self.conn.abort()
                return
            for bucket in self.buckets:
                bucket.take(sent)
            self.queued -= sent
            if offset + sent == len(view):
                self.queue.popleft()
            else:
                entry[2] = offset + sent
            if sent < size:
                self.blocked = True
        if self.eof and not self.queue and not self.done:
            self.done = True
            try:
                self.dst.shutdown(socket.SHUT_WR)  # pass the end of the stream on
            except OSError:
                pass
        self.conn.update()


class _Connection:
    def __init__(self, link: Link, client: socket.socket, upstream: socket.socket) -> None:
        self.link, self.client, self.upstream = link, client, upstream
        shape, now = link.shape, time.monotonic()
        one_way = shape.rtt / 2
        slice_ = _slice(shape)
        own = [b for b in (_bucket(shape.per_connection, slice_), _bucket(shape.per_connection, slice_)) if b]
        self.up = _Pipe(self, client, upstream, one_way, now + shape.rtt, own[:1] + link._totals[:1], slice_,
                        _RequestCounter(link))
        self.down = _Pipe(self, upstream, client, one_way, now, own[1:] + link._totals[1:], slice_, None)
        self.masks = {client: 0, upstream: 0}
        self.closed = False
        self.update()

    def _mask(self, sock: socket.socket) -> int:
        out, into = (self.up, self.down) if sock is self.client else (self.down, self.up)
        return (selectors.EVENT_READ if out.reading else 0) | (selectors.EVENT_WRITE if into.blocked else 0)

    def update(self) -> None:
        if self.closed:
            return
        if self.up.done and self.down.done:
            self.abort()
            return
        selector = self.link._selector
        for sock, old in self.masks.items():
            new = self._mask(sock)
            if new == old:
                continue
            if not old:
                selector.register(sock, new, self)
            elif not new:
                selector.unregister(sock)
            else:
                selector.modify(sock, new, self)
            self.masks[sock] = new

    def on_event(self, sock: socket.socket, events: int) -> None:
        out, into = (self.up, self.down) if sock is self.client else (self.down, self.up)
        if events & selectors.EVENT_WRITE:
            into.on_writable()
        if events & selectors.EVENT_READ and not self.closed:
            out.on_readable()

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sock, mask in self.masks.items():
            if mask:
                self.link._selector.unregister(sock)
            sock.close()
        self.link._connections.discard(self)


class Link:
    """A shaped link to ``target`` (``http://host:port``), served by a thread of this process
    at :attr:`endpoint`. :attr:`count` is the number of HTTP requests that went through."""

    def __init__(self, target: str, rtt: float = DEFAULT_RTT, per_connection: float | None = DEFAULT_PER_CONNECTION,
                 total: float | None = DEFAULT_TOTAL) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.shape = Shape(rtt, per_connection, total)
        self.count = 0
        """HTTP requests that went through (their heads, counted as they arrive)."""
        self.connections = 0
        slice_ = _slice(self.shape)
        self._totals = [b for b in (_bucket(total, slice_), _bucket(total, slice_)) if b]  # up, down
        self._connections: set[_Connection] = set()
        self._timers: list[tuple[float, int, _Pipe]] = []
        self._sequence = itertools.count()
        self._selector = selectors.DefaultSelector()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._wake_reader, self._waker = socket.socketpair()
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_reader, selectors.EVENT_READ, "wake")
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"jangdok-link-{self.port}", daemon=True)
        self._thread.start()

    def _schedule(self, pipe: _Pipe, when: float) -> None:
        if pipe.timer is not None and pipe.timer <= when:
            return  # it wakes earlier, and will look again then
        pipe.timer = when
        heapq.heappush(self._timers, (when, next(self._sequence), pipe))

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            self.connections += 1
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # slices leave when paced
            self._connections.add(_Connection(self, client, upstream))

    def _run(self) -> None:
        try:
            while not self._closing:
                timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else None
                for key, events in self._selector.select(timeout):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._wake_reader.recv(64)
                    elif not key.data.closed:
                        key.data.on_event(key.fileobj, events)
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    when, _, pipe = heapq.heappop(self._timers)
                    if pipe.timer == when:
                        pipe.timer = None
                        if not pipe.conn.closed:
                            pipe.pump()
        finally:
            for conn in list(self._connections):
                conn.abort()
            self._selector.close()
            for sock in (self._listener, self._wake_reader, self._waker):
                sock.close()

    def close(self) -> None:
        """Stop accepting and close every connection (both ends); the port is free after."""
        if self._closing:
            return
        self._closing = True
        try:
            self._waker.send(b"x")
        except OSError:
            pass
        self._thread.join(10)

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LinkProcess:
    """A :class:`Link` in a process of its own, with the same ``endpoint``, ``count`` and
    ``close()``. It ends with this process too (its standard input closes)."""

    def __init__(self, target: str, shape: Shape = Shape()) -> None:
        self.shape = shape
        spec = json.dumps({"target": target, **asdict(shape)})
        self._process = subprocess.Popen([sys.executable, "-m", "jangdok.bench", "--link-child", spec],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self._process.stdout is not None and self._process.stdin is not None
        self._stdin, self._stdout = self._process.stdin, self._process.stdout
        line = self._stdout.readline()
        if not line.startswith("http://"):
            self.close()
            raise RuntimeError(f"the link process did not start (it said {line!r})")
        self.endpoint = line.strip()

    @property
    def count(self) -> int:
        self._stdin.write("count\n")
        return int(self._stdout.readline())

    def close(self) -> None:
        try:
            self._stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._stdout.close()

    def __enter__(self) -> LinkProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def link_child(spec: dict[str, Any]) -> None:
    """The process behind a :class:`LinkProcess`: prints the endpoint, answers ``count`` lines
    with the request count, and closes the link when its standard input ends."""
    link = Link(spec.pop("target"), **spec)
    try:
        print(link.endpoint, flush=True)
        for line in sys.stdin:
            if line.strip() == "count":
                print(link.count, flush=True)
    finally:
        link.close()
