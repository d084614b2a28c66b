"""The shaped link (jangdok.bench.link): a loopback proxy that adds a round trip to every request
and to every new connection, limits each connection's and the link's bandwidth, and counts the
HTTP requests. Times are checked as lower bounds only (what the link must cost at least); how
much more a busy machine adds is never asserted."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from helpers import BUCKET

from jangdok.bench.link import Link, LinkProcess, Shape

MB = 1e6


def client_through(link: Any, **config: Any) -> Any:
    """A boto3 client whose requests go through ``link``, none of them retried."""
    import boto3
    from botocore.config import Config
    from seaweed import READ_WRITE

    return boto3.client("s3", endpoint_url=link.endpoint, aws_access_key_id=READ_WRITE[0],
                        aws_secret_access_key=READ_WRITE[1], region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}, **config))


def timed(action: Any) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def test_each_request_pays_the_round_trip_and_a_new_connection_one_more(shaped_link: Any, seaweed: Any,
                                                                          s3_prefix: str) -> None:
    key = s3_prefix + "small"
    seaweed.client().put_object(Bucket=BUCKET, Key=key, Body=b"x" * 100)
    rtt = 0.05
    link = shaped_link(rtt=rtt, per_connection=None, total=None)
    client = client_through(link)
    first = timed(lambda: client.head_object(Bucket=BUCKET, Key=key))  # opens the connection
    again = timed(lambda: [client.get_object(Bucket=BUCKET, Key=key)["Body"].read() for _ in range(4)])
    margin = 0.002  # the two clocks' reading, not the link's slack: it never lets a byte through early
    assert first >= 2 * rtt - margin
    assert again >= 4 * rtt - margin
    assert link.count == 5
    assert link.connections == 1


def test_one_connection_moves_no_faster_than_its_rate_either_way(shaped_link: Any, s3_prefix: str) -> None:
    rate, size = 10 * MB, 4_000_000
    link = shaped_link(rtt=0.0, per_connection=rate, total=None)
    client = client_through(link)
    body = uuid.uuid4().bytes * (size // 16)
    up = timed(lambda: client.put_object(Bucket=BUCKET, Key=s3_prefix + "big", Body=body))
    down = timed(lambda: client.get_object(Bucket=BUCKET, Key=s3_prefix + "big")["Body"].read())
    # A bucket starts full (a few slices' worth): the rest of the bytes wait for their tokens.
    assert up >= 0.9 * size / rate
    assert down >= 0.9 * size / rate


def test_parallel_connections_share_the_total(shaped_link: Any, seaweed: Any, s3_prefix: str) -> None:
    size, connections, total = 1_000_000, 4, 10 * MB
    seaweed.client().put_object(Bucket=BUCKET, Key=s3_prefix + "part", Body=b"p" * size)
    link = shaped_link(rtt=0.0, per_connection=None, total=total)
    clients = [client_through(link) for _ in range(connections)]  # one connection each
    got: list[int] = []

    def fetch(client: Any) -> None:
        got.append(len(client.get_object(Bucket=BUCKET, Key=s3_prefix + "part")["Body"].read()))

    def all_at_once() -> None:
        threads = [threading.Thread(target=fetch, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    elapsed = timed(all_at_once)
    assert got == [size] * connections
    assert link.connections == connections
    assert elapsed >= 0.9 * size * connections / total


def test_requests_are_counted_exactly(shaped_link: Any, s3_prefix: str) -> None:
    link = shaped_link(rtt=0.0, per_connection=None, total=None)
    client = client_through(link)
    key = s3_prefix + "counted"
    part = b"m" * (5 * 2**20)  # S3's smallest part that is not the last

    def multipart() -> None:
        upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        parts = [{"PartNumber": n, "ETag": client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=n,
                                                              Body=part[: len(part) // n])["ETag"]}
                 for n in (1, 2)]
        client.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})

    steps = [
        ("PUT", 1, lambda: client.put_object(Bucket=BUCKET, Key=key, Body=b"v" * 3000)),
        ("HEAD", 1, lambda: client.head_object(Bucket=BUCKET, Key=key)),
        ("GET", 1, lambda: client.get_object(Bucket=BUCKET, Key=key)["Body"].read()),
        ("ranged GET", 1, lambda: client.get_object(Bucket=BUCKET, Key=key, Range="bytes=10-99")["Body"].read()),
        ("multipart: create, 2 parts, complete", 4, multipart),
        ("GET of the multipart object", 1, lambda: client.get_object(Bucket=BUCKET, Key=key)["Body"].read()),
        ("list", 1, lambda: client.list_objects_v2(Bucket=BUCKET, Prefix=s3_prefix)),
        ("DELETE", 1, lambda: client.delete_object(Bucket=BUCKET, Key=key)),
        ("GET of a missing key", 1, lambda: pytest.raises(client.exceptions.NoSuchKey, client.get_object,
                                                            Bucket=BUCKET, Key=key)),
    ]
    for name, requests, step in steps:
        before = link.count
        step()
        assert link.count - before == requests, name


class _Echo(BaseHTTPRequestHandler):
    """Reads each request's body, chunked or not, and answers with its length."""

    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:  # noqa: N802 - http.server's name
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = str(len(body)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_PUT  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_bodies_that_look_like_requests_are_not_counted(echo_server: str) -> None:
    """Bodies are passed over by their length or their chunks, whatever bytes they hold."""
    fake = b"GET /not-a-request HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
    with Link(echo_server, rtt=0.0, per_connection=None, total=None) as link:
        conn = http.client.HTTPConnection("127.0.0.1", link.port)
        tricky = [fake[:7], fake[7:], b"\r\n0\r\n"]  # chunks whose data looks like chunk syntax
        sent = [("PUT", fake, False, len(fake)), ("PUT", iter(tricky), True, len(b"".join(tricky))),
                ("GET", None, False, 0), ("PUT", b"", False, 0)]
        for method, body, chunked, length in sent:
            conn.request(method, "/k", body=body, encode_chunked=chunked)
            assert int(conn.getresponse().read()) == length
        conn.close()
        assert link.count == len(sent)
        assert link.connections == 1


def test_close_stops_accepting_closes_every_connection_and_frees_the_port(shaped_link: Any) -> None:
    link = shaped_link(rtt=0.0, per_connection=None, total=None)
    client_through(link).list_buckets()
    open_conn = socket.create_connection(("127.0.0.1", link.port))
    open_conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # half a request: the link holds it
    deadline = time.monotonic() + 5
    while link.connections < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    link.close()
    open_conn.settimeout(5)
    try:
        assert open_conn.recv(100) == b""  # closed by the link
    except ConnectionResetError:
        pass
    open_conn.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", link.port), timeout=5)
    socket.create_server(("127.0.0.1", link.port)).close()  # the port is free to listen on again
    assert not [t for t in threading.enumerate() if t.name == f"jangdok-link-{link.port}"]
    link.close()  # a second close is harmless


def test_a_link_in_its_own_process_counts_and_closes(seaweed: Any) -> None:
    shape = Shape(rtt=0.0, per_connection=None, total=None)
    link = LinkProcess(seaweed.endpoint, shape)
    client = client_through(link)
    client.list_buckets()
    client.head_bucket(Bucket=BUCKET)
    assert link.count == 2
    port = int(link.endpoint.rsplit(":", 1)[1])
    link.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
