"""A TCP proxy on 127.0.0.1 that injects real network faults between boto3 and an S3 server.

Each accepted connection takes the next fault from a queue (``pass`` once the queue is empty):

* ``("pass",)`` forwards both ways;
* ``("cut", n[, before])`` forwards the request, the response headers and ``n`` body bytes,
  then calls ``before()`` if given (to change the world mid-transfer) and drops;
* ``("reset", n)`` as ``cut``, but ends the connection with an RST (a peer that crashed, a
  middlebox timing out): the client's read fails with an error rather than ending;
* ``("status", http_status, code)`` answers with an S3 error document and closes;
* ``("stall",)`` accepts, reads, and never answers;
* ``("flip", n)`` forwards both ways but flips one bit of the ``n``-th byte the server sends
  on that connection (headers included): a body garbled in transit, with no error at all.

Independently of the queue, :meth:`lose_answer_to` makes the server receive and carry out the
next request whose request line matches, while its answer is dropped and the connection cut:
the client cannot tell whether the request took effect. :meth:`drop_headers` removes request
headers on the way (``If-Match`` on PUT, say): in front of a server that does not check
signatures (moto), that server then really never sees them, as one that ignores them would not.
:meth:`rewrite_answers` plays a man in the middle on an ``http://`` path, who holds no
credential (the requests stay signed and untouched) but rewrites the bodies of chosen answers.

The client sees genuine resets, short bodies, 503s and timeouts from its own sockets.
Request lines and Range headers passing through are recorded for assertions, and so is
what each fault did (:attr:`FaultProxy.fired`), so a test can check that its fault happened.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_REQUEST_LINE = re.compile(rb"(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP/1\.1")
_RANGE = re.compile(rb"[Rr]ange: (bytes=\d*-\d*)")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
_HEADERS_END = b"\r\n\r\n"
_CONTINUE = re.compile(rb"HTTP/1\.[01] 100 [^\r\n]*\r\n\r\n")


def _cut(sock: socket.socket) -> None:
    """End a connection now, mid-response. A FIN, not an RST: on an RST the client's kernel
    may discard bytes it already received, which would make the fault's size a matter of
    timing. shutdown() comes first because close() alone is deferred while the request pump
    is blocked reading the same socket."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _reset(sock: socket.socket) -> None:
    """End a connection now with an RST: no FIN first (a linger of 0), and only the reading side
    shut down, which wakes the request pump without sending anything."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    sock.close()


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.faults: deque[tuple[Any, ...]] = deque()
        self.requests: list[str] = []
        self.ranges: list[str] = []
        self.statuses: list[int] = []
        """Status codes of the responses forwarded (found by their status lines)."""
        self.connections = 0
        self.most_open = 0
        """The most client connections that were open at once: a client opens one only when
        none of its pool is free, so this bounds its requests in flight."""
        self._active = 0
        self.fired: list[str] = []
        """What the faults did, in order, when they did it: ``"status 503 SlowDown"`` (answered),
        ``"cut 0"`` (the connection cut after the headers and 0 body bytes), ``"flip 10"``,
        ``"lost answer: PUT /b/k"``, ``"dropped If-Match: PUT /b/k"``, ``"stall"``."""
        self._dropped: dict[str, frozenset[str]] = {}
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._lose_answer: re.Pattern[bytes] | None = None
        self._after_continue = False
        self._after_loss: tuple[tuple[Any, ...], ...] = ()
        self._rewrites: list[tuple[re.Pattern[bytes], _Rewrite]] = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                fault = self.faults.popleft() if self.faults else ("pass",)
                self._open.append(client)
            threading.Thread(target=self._serve, args=(client, fault), daemon=True).start()

    def lose_answer_to(self, request_line: str, *then: tuple[Any, ...], after_continue: bool = False) -> None:
        """Drop the answer to the next request whose line (``POST /bucket/key?uploadId=...``)
        matches this regular expression; ``then``: faults queued at that moment, for the
        connections opened after it.

        A request with ``Expect: 100-continue`` sends its body only after the server's interim
        ``100 Continue``: by default that is cut too (the server gets the headers and no body);
        with ``after_continue`` it passes, so the whole request lands and only the final answer
        is lost."""
        self._lose_answer = re.compile(request_line.encode())
        self._after_loss = then
        self._after_continue = after_continue

    def rewrite_answers(self, request_line: str, rewrite: Callable[[bytes], bytes], status: int | None = None,
                        drop: tuple[str, ...] = ()) -> None:
        """From now on, replace the body of the answer to every request whose line
        (``GET /bucket?list-type=2&prefix=...``) matches this regular expression with
        ``rewrite(body)`` (the body as the server sent it, unchunked), its Content-Length set
        to match, its status with ``status`` if given, and the headers named in ``drop`` removed.
        Each rewrite is recorded in :attr:`fired` (``"rewrote: GET /b?..."``).

        Answers are parsed only on connections opened after the first rule, with no other
        fault: register rules before the client's first request."""
        with self._lock:
            dropped = frozenset(name.lower().encode() for name in drop)
            self._rewrites.append((re.compile(request_line.encode()), _Rewrite(rewrite, status, dropped)))

    def _rewrite_for(self, request_line: bytes) -> _Rewrite | None:
        with self._lock:
            return next((rewrite for pattern, rewrite in self._rewrites if pattern.search(request_line)), None)

    def drop_headers(self, method: str, *names: str) -> None:
        """Remove these headers from every ``method`` request from now on (none: stop)."""
        with self._lock:
            self._dropped[method] = frozenset(name.lower() for name in names)

    def _take_lost_answer(self, data: bytes) -> bool | None:
        """None if ``data`` holds no request whose answer is to be lost; else whether an
        interim 100 Continue may still pass."""
        with self._lock:
            pattern = self._lose_answer
            line = next((m for m in _REQUEST_LINE.finditer(data) if pattern and pattern.search(m.group(0))), None)
            if line is None:
                return None
            self._lose_answer = None
            self.faults.extend(self._after_loss)
            self.fired.append(f"lost answer: {line.group(1).decode()} {line.group(2).decode()}")
            return self._after_continue

    def _fire(self, what: str) -> None:
        with self._lock:
            self.fired.append(what)

    def _record(self, data: bytes) -> None:
        with self._lock:
            self.requests += [f"{m.group(1).decode()} {m.group(2).decode()}" for m in _REQUEST_LINE.finditer(data)]
            self.ranges += [m.group(1).decode() for m in _RANGE.finditer(data)]

    def _serve(self, client: socket.socket, fault: tuple[Any, ...]) -> None:
        with self._lock:
            self._active += 1
            self.most_open = max(self.most_open, self._active)
        try:
            self._serve_one(client, fault)
        finally:
            with self._lock:
                self._active -= 1

    def _serve_one(self, client: socket.socket, fault: tuple[Any, ...]) -> None:
        kind = fault[0]
        try:
            if kind == "stall":
                self._fire("stall")
                while client.recv(65536):
                    pass
                return
            if kind == "status":
                request = client.recv(65536)
                self._record(request)
                # ("status", code, error code[, {error document fields}[, {response headers}]])
                fields = {"Message": "injected by the test proxy", **(fault[3] if len(fault) > 3 else {})}
                extra = "".join(f"<{name}>{value}</{name}>" for name, value in fields.items())
                sent_headers = fault[4] if len(fault) > 4 else {}
                headers = "".join(f"{name}: {value}\r\n" for name, value in sent_headers.items())
                body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault[2]}</Code>{extra}'
                        "</Error>").encode()
                self._fire(f"status {fault[1]} {fault[2]}")  # before the client can read it and go on
                client.sendall(
                    f"HTTP/1.1 {fault[1]} Injected\r\nContent-Type: application/xml\r\n{headers}"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
                )
                client.close()
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._open.append(upstream)
                rewriting = bool(self._rewrites) and kind == "pass"
            if rewriting:
                asked: deque[tuple[bytes, _Rewrite | None]] = deque()
                threading.Thread(target=self._pump_requests, args=(client, upstream, threading.Event(),
                                                                    threading.Event(), asked), daemon=True).start()
                _Answers(upstream, client, asked, self._fire).pump()
                return
            budget = fault[1] if kind in ("cut", "reset") else None
            before_cut = fault[2] if kind == "cut" and len(fault) > 2 else None
            flip_at = fault[1] if kind == "flip" else None
            lost, continues = threading.Event(), threading.Event()
            threading.Thread(target=self._pump_requests, args=(client, upstream, lost, continues),
                             daemon=True).start()
            self._pump_responses(upstream, client, budget, before_cut, lost, continues, flip_at, kind == "reset")
        except OSError:
            pass

    def _pump_requests(self, client: socket.socket, upstream: socket.socket, lost: threading.Event,
                       continues: threading.Event,
                       asked: deque[tuple[bytes, _Rewrite | None]] | None = None) -> None:
        """Forward requests; with ``asked``, note each one's line and its rewrite, if any,
        before it reaches the server (so before its answer can come back)."""
        def seen(request_line: bytes) -> None:
            if asked is not None:
                asked.append((request_line, self._rewrite_for(request_line)))

        headers = _HeaderFilter(self._drop_from, seen)
        try:
            while data := client.recv(65536):
                self._record(data)
                taken = self._take_lost_answer(data)
                if taken is not None:
                    if taken:
                        continues.set()
                    lost.set()  # before forwarding, so the answer cannot slip through first
                upstream.sendall(headers.feed(data))
        except OSError:
            pass
        finally:
            try:
                upstream.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _drop_from(self, request_line: bytes, names: list[str]) -> frozenset[str]:
        """The headers to remove from this request (and a record of those removed)."""
        with self._lock:
            dropped = self._dropped.get(request_line.split(b" ", 1)[0].decode(), frozenset())
            found = [name for name in names if name.lower() in dropped]
            if found:
                self.fired.append(f"dropped {', '.join(found)}: {request_line.rsplit(b' ', 1)[0].decode()}")
        return dropped

    def _pump_responses(self, upstream: socket.socket, client: socket.socket, budget: int | None,
                        before_cut: Callable[[], object] | None, lost: threading.Event,
                        continues: threading.Event, flip_at: int | None = None, reset: bool = False) -> None:
        """Forward the response; with a budget, only the headers and ``budget`` body bytes."""
        head = b""
        sent = 0
        fault_budget = budget
        try:
            while data := upstream.recv(65536):
                if lost.is_set():
                    interim = _CONTINUE.match(data) if continues.is_set() else None
                    if interim:  # sent before the body, so never in one piece with the answer
                        client.sendall(interim.group(0))
                        data = data[interim.end():]
                    if data:
                        _cut(client)
                        _cut(upstream)
                        return
                    continue
                if flip_at is not None and sent <= flip_at < sent + len(data):
                    garbled = bytearray(data)
                    garbled[flip_at - sent] ^= 0x01
                    data = bytes(garbled)
                    self._fire(f"flip {flip_at}")
                sent += len(data)
                with self._lock:
                    self.statuses += [int(m.group(1)) for m in _STATUS_LINE.finditer(data)]
                if budget is not None:
                    if b"\r\n\r\n" not in head:
                        head += data
                        if b"\r\n\r\n" not in head:
                            client.sendall(data)
                            continue
                        headers_end = head.index(b"\r\n\r\n") + 4
                        already = len(head) - len(data)
                        body = head[headers_end:]
                        client.sendall(data[: max(0, headers_end - already)])
                        data = body
                    data = data[:budget]
                    budget -= len(data)
                client.sendall(data)
                if budget == 0:
                    self._fire(f"{'reset' if reset else 'cut'} {fault_budget}")
                    if before_cut is not None:
                        before_cut()
                    (_reset if reset else _cut)(client)
                    _cut(upstream)
                    return
        except OSError:
            pass
        client.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._open:
                try:
                    sock.close()
                except OSError:
                    pass


class _HeaderFilter:
    """Removes headers from the requests on one connection: each header block is gathered
    whole and rewritten, and the Content-Length bytes of body after it pass untouched.
    (Requests with a chunked body are not parsed; no test sends one through a filter.)"""

    def __init__(self, drop_from: Callable[[bytes, list[str]], frozenset[str]],
                 seen: Callable[[bytes], None] = lambda request_line: None) -> None:
        self._drop_from = drop_from
        self._seen = seen
        self._head = b""
        self._body_left = 0

    def feed(self, data: bytes) -> bytes:
        out = []
        while data:
            if self._body_left:
                body = data[: self._body_left]
                self._body_left -= len(body)
                out.append(body)
                data = data[len(body):]
                continue
            self._head += data
            end = self._head.find(_HEADERS_END)
            if end < 0:
                break
            head, data, self._head = self._head[:end], self._head[end + len(_HEADERS_END):], b""
            request_line, *lines = head.split(b"\r\n")
            fields = [(line.split(b":", 1)[0].decode().strip(), line) for line in lines]
            dropped = self._drop_from(request_line, [name for name, _ in fields])
            kept = [line for name, line in fields if name.lower() not in dropped]
            self._body_left = next((int(line.split(b":", 1)[1]) for name, line in fields
                                    if name.lower() == "content-length"), 0)
            self._seen(request_line)
            out.append(b"\r\n".join([request_line, *kept]) + _HEADERS_END)
        return b"".join(out)


@dataclass(frozen=True)
class _Rewrite:
    body: Callable[[bytes], bytes]
    status: int | None
    drop: frozenset[bytes] = frozenset()


class _Answers:
    """The answers on one connection, parsed one by one (HTTP/1.1: Content-Length, chunked,
    or until the server closes; none after HEAD, 1xx, 204 and 304) so that chosen bodies can
    be replaced; every other byte is forwarded as it came."""

    def __init__(self, upstream: socket.socket, client: socket.socket,
                 asked: deque[tuple[bytes, _Rewrite | None]], fire: Callable[[str], None]) -> None:
        self._upstream = upstream
        self._client = client
        self._asked = asked
        self._fire = fire
        self._buffer = b""

    def _more(self) -> bool:
        data = self._upstream.recv(65536)
        self._buffer += data
        return bool(data)

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._more():
                raise EOFError
        taken, self._buffer = self._buffer[:size], self._buffer[size:]
        return taken

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            if not self._more():
                raise EOFError
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def _chunked(self) -> tuple[bytes, bytes]:
        """The body unchunked, and the bytes as sent."""
        body, raw = [], []
        while True:
            size_line = self._line()
            raw.append(size_line + b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer = self._line()
                    raw.append(trailer + b"\r\n")
                    if not trailer:
                        return b"".join(body), b"".join(raw)
            chunk = self._take(size + 2)
            body.append(chunk[:-2])
            raw.append(chunk)

    def pump(self) -> None:
        try:
            while True:
                while _HEADERS_END not in self._buffer:
                    if not self._more():
                        self._client.sendall(self._buffer)
                        return
                head, self._buffer = self._buffer.split(_HEADERS_END, 1)
                status = int(head.split(b" ", 2)[1])
                if 100 <= status < 200:
                    self._client.sendall(head + _HEADERS_END)
                    continue
                request_line, rewrite = self._asked.popleft() if self._asked else (b"GET", None)
                status_line, *lines = head.split(b"\r\n")
                fields = {line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip() for line in lines}
                if request_line.startswith(b"HEAD ") or status in (204, 304):
                    body = raw = b""
                elif b"content-length" in fields:
                    body = raw = self._take(int(fields[b"content-length"]))
                elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
                    body, raw = self._chunked()
                else:  # until the server closes
                    while self._more():
                        pass
                    body = raw = self._take(len(self._buffer))
                if rewrite is None:
                    self._client.sendall(head + _HEADERS_END + raw)
                    continue
                body = rewrite.body(body)
                if rewrite.status is not None:
                    status_line = b"HTTP/1.1 %d Rewritten" % rewrite.status
                kept = [line for line in lines if line.split(b":", 1)[0].strip().lower()
                        not in (b"content-length", b"transfer-encoding", *rewrite.drop)]
                self._fire(f"rewrote: {request_line.rsplit(b' ', 1)[0].decode()}")
                self._client.sendall(b"\r\n".join([status_line, *kept, b"Content-Length: %d" % len(body)])
                                     + _HEADERS_END + body)
        except (OSError, EOFError):
            pass
        finally:
            self._client.close()
