"""A loopback TCP proxy in front of the S3 server."""

from __future__ import annotations

from typing import Any


class CountingProxy:
    """A loopback TCP proxy in front of the S3 server that counts the HTTP requests passing
    through, for clients without botocore hooks (s3fs's aiobotocore, obstore's Rust client).

    It reads each request's head, counts it, and forwards the body by its Content-Length (or
    its chunks); responses are copied back untouched. Used only in an untimed counting pass.
    """

    def __init__(self, target: str) -> None:
        import socket
        import threading
        from urllib.parse import urlsplit

        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.count = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threading = threading
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self.target)
            self._threading.Thread(target=self._copy, args=(upstream, client), daemon=True).start()
            self._threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _copy(source: Any, sink: Any) -> None:
        try:
            while data := source.recv(1 << 20):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(2)
                except OSError:
                    pass

    def _requests(self, client: Any, upstream: Any) -> None:
        buffer = b""

        def fill() -> bool:
            nonlocal buffer
            data = client.recv(1 << 20)
            buffer += data
            return bool(data)

        def forward(size: int) -> None:  # send exactly size bytes of the stream onwards
            nonlocal buffer
            while len(buffer) < size and fill():
                pass
            upstream.sendall(buffer[:size])
            buffer = buffer[size:]

        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    if not fill():
                        return
                head_size = buffer.index(b"\r\n\r\n") + 4
                headers = buffer[:head_size].decode("latin-1").lower().split("\r\n")
                with self._lock:
                    self.count += 1
                forward(head_size)
                length = next((int(h.split(":", 1)[1]) for h in headers if h.startswith("content-length:")), 0)
                if any(h.startswith("transfer-encoding:") and "chunked" in h for h in headers):
                    while True:  # chunk-size line, data, CRLF; a zero-size chunk ends the body
                        while b"\r\n" not in buffer:
                            if not fill():
                                return
                        line_size = buffer.index(b"\r\n") + 2
                        chunk = int(buffer[:line_size].split(b";")[0], 16)
                        forward(line_size + chunk + 2 if chunk else line_size)
                        if not chunk:
                            while not buffer.startswith(b"\r\n") and b"\r\n\r\n" not in buffer:
                                if not fill():
                                    return
                            forward(2 if buffer.startswith(b"\r\n") else buffer.index(b"\r\n\r\n") + 4)
                            break
                else:
                    forward(length)
        except OSError:
            pass
        finally:
            try:
                upstream.shutdown(1)  # the client is done sending: let the server see it
            except OSError:
                pass

    def close(self) -> None:
        self._listener.close()
