"""A `looplab serve` worker cuts off clients too slow to send a request (serving.header_timeout_seconds, body_timeout_seconds), and serves everyone else as before."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from conftest import free_port, running_server

HEADER_TIMEOUT, BODY_TIMEOUT = 1, 3  # seconds, in the project copy's conf/test/serving.yml
PREDICT = "/v1/models/bike-demand/predict"


@pytest.fixture(scope="module")
def worker(root, tool, quiet_env, tmp_path_factory):
    "One `looplab serve` worker on a free port of a project copy whose conf/test sets short read timeouts: its base URL (no model is needed)."
    from looplab.core import copy_project_files

    project = copy_project_files(root, tmp_path_factory.mktemp("timeouts") / "project")
    (project / "conf" / "test" / "serving.yml").write_text(
        f"serving:\n  header_timeout_seconds: {HEADER_TIMEOUT}\n  body_timeout_seconds: {BODY_TIMEOUT}\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running_server([tool("looplab"), "serve", "--workers", "1", "--port", str(port), "--env", "test"], project,
                        {**quiet_env, "LOOPLAB_PROJECT_ROOT": str(project)}, url + "/health",
                        tmp_path_factory.mktemp("timeouts-log") / "serve.log"):
        yield url


def connect(url: str) -> socket.socket:
    "A raw connection to the worker; any read waits at most 30 s."
    return socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30)


def read_until_closed(connection: socket.socket) -> bytes:
    "Everything the worker sends until it closes the connection (a read that waits 30 s in vain fails the test)."
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def answer(received: bytes) -> tuple[int, dict]:
    "(status, JSON body) of one HTTP answer."
    head, body = received.split(b"\r\n\r\n", 1)
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_a_stalled_request_line_and_headers_are_cut_off(worker):
    with connect(worker) as connection:
        started = time.monotonic()
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: worker\r\nAccept: appl")
        received = read_until_closed(connection)
        waited = time.monotonic() - started
    status, body = answer(received)
    assert status == 408 and b"\r\nconnection: close\r\n" in received.lower()
    assert body == {"detail": f"the request headers did not arrive within {HEADER_TIMEOUT} s"}
    assert waited >= HEADER_TIMEOUT * 0.9  # never before the timeout


def test_a_stalled_body_is_cut_off(worker):
    with connect(worker) as connection:
        started = time.monotonic()
        connection.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: worker\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                           .encode() + b'{"records": [')
        received = read_until_closed(connection)
        waited = time.monotonic() - started
    status, body = answer(received)
    assert status == 408 and body == {"detail": f"the request body did not arrive within {BODY_TIMEOUT} s"}
    assert waited >= BODY_TIMEOUT * 0.9


def test_a_silent_connection_is_closed(worker):
    with connect(worker) as connection:
        assert read_until_closed(connection) == b""  # closed without an answer: it asked nothing


def read_answer(connection: socket.socket) -> bytes:
    "One whole answer (its headers and `content-length` bytes of body) from a connection that stays open."
    received = b""
    while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < content_length(received):
        chunk = connection.recv(65536)
        assert chunk, f"the worker closed the connection after {received!r}"
        received += chunk
    return received


def content_length(received: bytes) -> int:
    head = received.split(b"\r\n\r\n", 1)[0].lower()
    return int(head.split(b"\r\ncontent-length: ", 1)[1].split(b"\r\n", 1)[0])


def test_a_body_sent_steadily_and_an_idle_keep_alive_connection_are_served(worker):
    body = json.dumps({"records": [{"hr": 8, "temp": 0.3}]}).encode()
    size = -(-len(body) // 8)
    with connect(worker) as connection:
        connection.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: worker\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                           .encode())
        for start in range(0, len(body), size):  # 8 pieces half a second apart: longer than the body timeout in all, each gap far less
            time.sleep(0.5)
            connection.sendall(body[start:start + size])
        status, detail = answer(read_answer(connection))
        assert status == 503 and "not loaded yet" in detail["detail"]  # the body arrived whole and the app answered (no model here)
        time.sleep(HEADER_TIMEOUT * 2)  # idle on the keep-alive connection, for longer than the header timeout
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n")
        assert answer(read_until_closed(connection)) == (200, {"status": "ok"})


def test_the_worker_serves_on_after_cutting_clients_off(worker):
    slow = [connect(worker) for _ in range(3)]
    try:
        for connection in slow:
            connection.sendall(b"GET /health HTTP/1.1\r\n")
        for connection in slow:
            assert answer(read_until_closed(connection))[0] == 408
    finally:
        for connection in slow:
            connection.close()
    with requests.Session() as session:
        assert [session.get(worker + "/health", timeout=30).json() for _ in range(3)] == [{"status": "ok"}] * 3
        assert session.get(worker + "/ready", timeout=30).status_code == 503  # no model in this project: answered, not ready
