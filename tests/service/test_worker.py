"""The worker's pure parts: per-phase read timeouts on a real socket pair, shared connection counts, the 408."""

import http.client
import io
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from service.settings import Settings
from service.front_door.worker import (
    ConnectionCounts,
    ConnectionIdle,
    HeaderTimeout,
    TimedConnection,
    request_timeout_response,
)

SHORT = Settings(header_timeout_seconds=0.3, keepalive_seconds=0.3, body_timeout_seconds=0.3)


@pytest.fixture
def pair():
    server_side, client_side = socket.socketpair()
    yield server_side, client_side
    server_side.close()
    client_side.close()


def test_a_new_connection_that_sends_nothing_is_closed_quietly(pair):
    server_side, _ = pair
    with pytest.raises(ConnectionIdle):
        TimedConnection(server_side, SHORT).recv(1024)


def test_headers_trickled_past_the_deadline_get_a_header_timeout(pair):
    server_side, client_side = pair
    connection = TimedConnection(server_side, SHORT)
    started = time.monotonic()
    with pytest.raises(HeaderTimeout):
        while True:  # one byte every 0.1 s never lets a read wait long, but the deadline covers them all
            client_side.send(b"G")
            assert connection.recv(1) == b"G"
            time.sleep(0.1)
    assert time.monotonic() - started < 2


def test_a_kept_alive_connection_waits_for_its_next_request_then_times_the_headers_anew(pair):
    server_side, client_side = pair
    connection = TimedConnection(server_side, SHORT)
    client_side.send(b"GET / HTTP/1.1\r\n\r\n")
    assert connection.recv(1024).startswith(b"GET")
    connection.start_body(SimpleNamespace(must_close=False))
    connection.start_idle()
    with pytest.raises(ConnectionIdle):  # nothing of a next request: a quiet close, no 408
        connection.recv(1024)
    connection.start_idle()
    client_side.send(b"GE")
    assert connection.recv(1024) == b"GE"
    with pytest.raises(HeaderTimeout):
        connection.recv(1024)


def test_a_stalled_body_times_out_and_the_connection_will_close(pair):
    server_side, client_side = pair
    connection = TimedConnection(server_side, SHORT)
    request = SimpleNamespace(must_close=False)
    connection.start_body(request)
    client_side.send(b"part of a body")
    assert connection.recv(1024) == b"part of a body"
    with pytest.raises(TimeoutError):
        connection.recv(1024)
    assert request.must_close


def test_connection_counts_measure_each_worker_against_the_least_loaded_accepting_one():
    counts = ConnectionCounts(slots=4)
    first = counts.claim_slot(set())
    second = counts.claim_slot({first})
    assert (first, second) == (0, 1)
    counts.join(first)
    counts.add(first, 3)
    assert counts.excess(first) == 0  # the second worker is not accepting yet: it does not count
    counts.join(second)
    assert counts.excess(first) == 3 and counts.excess(second) == 0
    counts.add(second, 5)
    assert counts.excess(first) == 0 and counts.excess(second) == 2
    counts.free_slot(second)  # a dead worker's connections no longer count
    assert counts.excess(first) == 0
    assert counts.claim_slot({first}) == 1


def test_the_408_is_a_complete_http_response_with_the_service_error_body():
    raw = request_timeout_response("the request headers did not arrive within 10 s")
    response = http.client.HTTPResponse(SimpleNamespace(makefile=lambda *_: io.BytesIO(raw)))
    response.begin()
    assert response.status == 408 and response.getheader("Connection") == "close"
    body = orjson.loads(response.read())
    assert body == {"error": {"code": "request_timeout", "message": "the request headers did not arrive within 10 s"}}


def test_the_gunicorn_master_loads_its_config_and_worker_class_without_numpy_or_the_app():
    """The master only supervises: what it imports is resident in it (NumPy alone is ~11 MB) and in every worker
    before the worker loads the app."""
    script = """
import sys
sys.argv = ["gunicorn", "-c", "service/front_door/gunicorn.conf.py"]
from gunicorn.app.wsgiapp import WSGIApplication
WSGIApplication("check").load_config()
import service.front_door.worker
print(sorted(({m.split(".")[0] for m in sys.modules} | set(sys.modules)) & {"numpy", "flask", "onnxruntime", "PIL",
                                                                            "service.app"}))
"""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
