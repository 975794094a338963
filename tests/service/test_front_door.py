"""The front door under real gunicorn: slow clients, keep-alive, the SIGTERM drain and a killed worker.

Every load here is bounded in count and time, and the assertions are about outcomes (answers, statuses,
failures), never about how fast they came: the client timeouts are generous, but shorter than the server's
slow-client timeouts, so a server that let slow clients stall it fails these tests.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time
from pathlib import Path

import orjson
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SHIPPED_MODELS, GunicornServer, png_bytes

SLOW_CLIENT_TIMEOUT = 6  # HEADER_TIMEOUT_SECONDS and BODY_TIMEOUT_SECONDS of the server below
NORMAL_CLIENT_TIMEOUT = 3  # shorter: a request stuck behind the slow clients fails


@pytest.fixture(scope="module")
def front_door_server():
    server = GunicornServer(SHIPPED_MODELS, HEADER_TIMEOUT_SECONDS=str(SLOW_CLIENT_TIMEOUT),
                            BODY_TIMEOUT_SECONDS=str(SLOW_CLIENT_TIMEOUT), KEEPALIVE_SECONDS="2").start()
    yield server
    server.stop()


def connect(server: GunicornServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=20)


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:
        pass
    return b"".join(chunks)


def client_timeouts(server: GunicornServer) -> dict[str, float]:
    text = requests.get(server.url + "/metrics", timeout=10).text
    return {s.labels["phase"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "classifier_client_timeouts_total"}


def worker_pids(server: GunicornServer) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == server.process.pid:
            pids.append(int(stat.parent.name))
    return pids


def test_slow_clients_do_not_stall_the_service_and_are_cut_off_with_408(front_door_server, fashion):
    server = front_door_server
    before = client_timeouts(server)
    headers = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
               b"Content-Length: 102400\r\n\r\n")
    # 32 clients that send their headers one byte at a time, 32 that announce 100 kB and send nothing.
    tricklers = [connect(server) for _ in range(32)]
    stallers = [connect(server) for _ in range(32)]
    for sock in stallers:
        sock.sendall(headers)
    stop = threading.Event()

    def trickle():
        deadline = time.monotonic() + 3 * SLOW_CLIENT_TIMEOUT
        for position in range(len(headers)):
            if stop.is_set() or time.monotonic() > deadline:
                return
            for sock in tricklers:
                try:
                    sock.send(headers[position:position + 1])
                except OSError:
                    pass  # already answered and closed
            time.sleep(0.2)

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        image = png_bytes(fashion.x_test[0])
        latencies = []
        for _ in range(20):  # a normal client, meanwhile: fresh connections, so accepting is tested too
            started = time.monotonic()
            health = requests.get(server.url + "/healthz", timeout=NORMAL_CLIENT_TIMEOUT)
            predict = requests.post(server.url + "/predict", files={"image": ("0.png", image, "image/png")},
                                    timeout=NORMAL_CLIENT_TIMEOUT)
            latencies.append(time.monotonic() - started)
            assert health.status_code == 200 and predict.status_code == 200
            assert predict.json()["predictions"][0]["top"][0]["label"] == "Ankle boot"
        print(f"normal client beside 64 slow ones: slowest /healthz + /predict pair {max(latencies) * 1000:.0f} ms")

        answers = [read_until_closed(sock) for sock in tricklers + stallers]
    finally:
        stop.set()
        trickler.join()
        for sock in tricklers + stallers:
            sock.close()
    for answer in answers:
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.split(b" ")[:2] == [b"HTTP/1.1", b"408"], answer[:200]
        assert orjson.loads(rest.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
    after = client_timeouts(server)
    assert after.get("header", 0) - before.get("header", 0) == 32
    assert after.get("body", 0) - before.get("body", 0) == 32


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(front_door_server):
    with connect(front_door_server) as sock:
        assert read_until_closed(sock) == b""


def test_one_kept_alive_connection_carries_100_requests(front_door_server, fashion):
    image = png_bytes(fashion.x_test[1])
    connection = http.client.HTTPConnection("127.0.0.1", front_door_server.port, timeout=10)
    ports = set()
    for i in range(100):
        if i % 2:
            connection.request("GET", "/healthz")
        else:
            connection.request("POST", "/predict", body=image, headers={"Content-Type": "image/png"})
        response = connection.getresponse()
        body = orjson.loads(response.read())
        assert response.status == 200 and response.getheader("Connection") != "close"
        assert i % 2 or body["predictions"][0]["top"][0]["index"] == int(fashion.y_test[1])
        ports.add(connection.sock.getsockname()[1])
    connection.close()
    assert len(ports) == 1  # never reconnected


def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(front_door_server):
    with connect(front_door_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = read_until_closed(sock)  # KEEPALIVE_SECONDS=2: the server closes, the read ends
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b'{"status":"ok"}')


def run_load(server: GunicornServer, image: bytes, routable: threading.Event, threads: int = 4,
             max_requests: int = 2000, max_seconds: float = 40):
    """POST real images from ``threads`` keep-alive clients while ``routable`` is set, as a load balancer
    sends traffic only to an instance it sees ready. Returns the outcomes by kind, filled in as they come,
    and the client threads."""
    outcomes: dict[str, int] = {}
    lock = threading.Lock()

    def client():
        session = requests.Session()
        deadline = time.monotonic() + max_seconds
        for _ in range(max_requests):
            if not routable.is_set() or time.monotonic() > deadline:
                break
            try:
                response = session.post(server.url + "/predict", files={"image": ("x.png", image, "image/png")},
                                        timeout=10)
                kind = "ok" if response.status_code == 200 else f"status {response.status_code}"
            except requests.RequestException as exc:
                kind = f"failed: {type(exc).__name__}"
            with lock:
                outcomes[kind] = outcomes.get(kind, 0) + 1

    clients = [threading.Thread(target=client) for _ in range(threads)]
    for thread in clients:
        thread.start()
    return outcomes, clients


def test_sigterm_drains_under_load_without_failing_a_request(fashion):
    server = GunicornServer(SHIPPED_MODELS, DRAIN_SECONDS="2").start()
    routable = threading.Event()
    routable.set()
    try:
        outcomes, clients = run_load(server, png_bytes(fashion.x_test[2]), routable)
        time.sleep(1.0)
        server.process.send_signal(signal.SIGTERM)
        readiness = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and routable.is_set():  # the load balancer's readiness probe
            try:
                response = requests.get(server.url + "/readyz", timeout=5)
                readiness.append((response.status_code, response.json()["status"]))
                if response.status_code != 200:
                    routable.clear()
            except requests.ConnectionError:
                readiness.append((0, "closed"))
                routable.clear()
            time.sleep(0.2)
        for client in clients:
            client.join()
        exit_code = server.process.wait(timeout=30)
    finally:
        routable.clear()
        server.stop()
    print(f"SIGTERM under load: {outcomes}, /readyz after it: {readiness}")
    assert readiness[-1] == (503, "draining")  # seen while requests were still being served
    assert set(outcomes) == {"ok"} and outcomes["ok"] > 20, outcomes  # nothing in flight failed
    assert exit_code == 0


def test_a_killed_worker_fails_only_its_requests_in_flight_and_is_replaced(fashion):
    server = GunicornServer(SHIPPED_MODELS).start()
    routable = threading.Event()
    routable.set()
    kills, clients_count = 4, 4
    try:
        outcomes, clients = run_load(server, png_bytes(fashion.x_test[3]), routable, threads=clients_count)
        for _ in range(kills):
            time.sleep(1.0)
            os.kill(worker_pids(server)[0], signal.SIGKILL)
        time.sleep(1.0)
        routable.clear()
        for client in clients:
            client.join()
        deadline = time.monotonic() + 20
        while len(worker_pids(server)) != 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(worker_pids(server)) == 2
        assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
    finally:
        routable.clear()
        server.stop()
    print(f"{kills} workers killed under load: {outcomes}")
    failed = sum(count for kind, count in outcomes.items() if kind != "ok")
    # Only the requests in flight on the killed worker: each of the 4 clients has one keep-alive connection and
    # one request at a time, so a kill costs each client at most one request. (Not fewer: while the replacement
    # boots, the reconnecting clients all land on the surviving worker, which may be the next one killed.)
    assert failed <= kills * clients_count and outcomes["ok"] > 100, outcomes
