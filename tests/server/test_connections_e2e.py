"""Connection limits on a real server: idle keep-alive and header-read timeouts, and the connection cap."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import MODEL, model_path
from tests.live_server import Server, serve

KEEP_ALIVE = 1.0
HEADERS = 3.0
CAP = 6
HEALTH = b"GET /health HTTP/1.1\r\nHost: wicore\r\n\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    model_path(MODEL)
    config = {"api": {"keep_alive_timeout": KEEP_ALIVE, "header_timeout": HEADERS, "max_connections": CAP}}
    with serve(tmp_path_factory.mktemp("connections"), config) as s:
        yield s


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def seconds_until_closed(sock: socket.socket, start: float) -> float:
    """Reads until the server closes the connection; the time since `start` when it did."""
    while sock.recv(65536):
        pass
    return time.monotonic() - start


def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(HEALTH)
        response = sock.recv(65536)
        assert response.startswith(b"HTTP/1.1 200"), response
        waited = seconds_until_closed(sock, time.monotonic())
    assert KEEP_ALIVE * 0.8 < waited < KEEP_ALIVE + 3, waited


def test_a_silent_connection_is_closed_after_the_header_timeout(server: Server) -> None:
    with connect(server) as sock:
        waited = seconds_until_closed(sock, time.monotonic())
    assert HEADERS * 0.8 < waited < HEADERS + 3, waited


def test_headers_sent_a_byte_at_a_time_are_cut_off(server: Server) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: wicore\r\nX-Slow: " + b"x" * 100 + b"\r\n\r\n"
    start = time.monotonic()
    closed_after = None
    with connect(server) as sock:
        sock.settimeout(0.5)
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(65536) == b"":
                    closed_after = time.monotonic() - start
                    break
            except TimeoutError:
                continue  # still open: the next byte half a second later (2 bytes/s)
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - start
                break
    assert closed_after is not None, "the slow client sent its whole request"
    assert HEADERS * 0.8 < closed_after < HEADERS + 3, closed_after


def test_connections_over_the_cap_get_503_until_idle_ones_are_cut_off(server: Server) -> None:
    idle = [connect(server) for _ in range(CAP)]
    try:
        time.sleep(0.3)  # let the server accept them all
        start = time.monotonic()
        # uvicorn answers 503 at once to any request while the cap is reached, /health included: a full
        # node says so instead of queueing (the trade-off: a health check sees it full too).
        with httpx.Client(base_url=server.url, timeout=10) as client:
            over = client.get("/health")
        assert over.status_code == 503, over.text
        assert time.monotonic() - start < 1.0
        # The silent connections are closed at the header timeout, which frees the slots.
        for sock in idle:
            seconds_until_closed(sock, start)
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        r = httpx.post(
            server.url + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
            timeout=60,
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    finally:
        for sock in idle:
            sock.close()
