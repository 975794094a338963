"""The hostile corpus (bench/hostile.py) against the real gunicorn server: every request refused or served within
its bounds, in JSON, while other clients keep being answered within a second.

Bounds, not timings: each case must end within seconds rather than stall a worker; the busiest worker's peak RSS
may grow by what one request is allowed (MAX_DECODE_BYTES, or MAX_BUFFERED_BYTES of bodies) and no more; after
the whole corpus every worker is back near its resting size.
"""

from __future__ import annotations

import pytest

from bench import hostile
from service.settings import Settings
from tests.conftest import SHIPPED_MODELS, GunicornServer

MIB = 1024 * 1024
DEFAULTS = Settings()
# What one request may hold at its peak: a decode at MAX_DECODE_BYTES, or the worker's whole MAX_BUFFERED_BYTES of
# bodies, plus the interpreter's own working memory for it.
PEAK_GROWTH_BOUND = max(DEFAULTS.max_decode_bytes, DEFAULTS.max_buffered_bytes) + 32 * MIB
RESTING_GROWTH_BOUND = 40 * MIB


@pytest.fixture(scope="module")
def server(tmp_path_factory, fashion):
    feedback = tmp_path_factory.mktemp("hostile-feedback")
    # A short body timeout, so the slow cases end in seconds; every limit at its default.
    server = GunicornServer(SHIPPED_MODELS, workers=2, FEEDBACK_TOKEN="hostile-token", FEEDBACK_DIR=str(feedback),
                            BODY_TIMEOUT_SECONDS="2").start()
    hostile.prepare()
    resting = {pid: hostile.rss(pid) for pid in hostile.worker_pids(server.process.pid)}
    server.resting = resting
    yield server
    server.stop()


@pytest.mark.parametrize("case", hostile.CASES, ids=[case.name for case in hostile.CASES])
def test_each_hostile_request_is_bounded_and_answered_in_json(server, case):
    result = hostile.run_case(case, ("127.0.0.1", server.port), "hostile-token", server.process.pid)
    statuses = [answer.status for answer in result.answers]
    assert set(statuses) <= set(case.expect), (statuses, [a.body[:300] for a in result.answers])
    for answer in result.answers:
        assert answer.headers.get("content-type", "").startswith("application/json"), answer.headers
        assert answer.headers.get("x-content-type-options") == "nosniff"
        if answer.status >= 400:
            assert hostile.error_shape_ok(answer, case.shape), answer.body[:300]
        if answer.status == 503:
            assert answer.headers.get("retry-after") == "1"
    assert result.seconds < (30 if case.slow else 10)
    assert result.peak_growth < PEAK_GROWTH_BOUND, f"{result.peak_growth / MIB:.0f} MB"
    assert result.probe_failures == []
    assert result.probe_answers >= 2 and result.probe_slowest < 1.0, f"{result.probe_slowest:.2f} s"


def test_the_limits_are_named_in_the_refusals(server):
    """Each refusal says which limit it met and the setting that moves it."""
    address = ("127.0.0.1", server.port)
    named = {"webp_64_multipart": "MAX_DECODE_BYTES", "png_64_megapixels": "MAX_REQUEST_PIXELS",
             "chunked_12mib_predict": "MAX_UPLOAD_BYTES", "header_block_120kb": "MAX_HEADER_BYTES",
             "trickled_upload": "MIN_UPLOAD_RATE"}
    for case in hostile.CASES:
        if case.name in named:
            (answer,) = case.send(address, "hostile-token")
            assert named[case.name] in answer.json()["error"]["message"], answer.body


def test_after_the_corpus_every_worker_is_back_near_its_resting_size(server):
    address = ("127.0.0.1", server.port)
    for case in hostile.CASES:
        if case.name in ("png_16_megapixels_accepted", "jpeg_38_megapixels_accepted", "chunked_12mib_predict"):
            for _ in range(3):
                case.send(address, "hostile-token")
    for pid, resting in server.resting.items():
        assert hostile.rss(pid) - resting < RESTING_GROWTH_BOUND, f"worker {pid}"
