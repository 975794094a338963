"""API keys and quotas as pure parts: the key's form and digest, the GCRA cell, the stores' exactness across
processes, the keys file's reloads, and the CLI."""

import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from service.access.gate import AccessGate
from service.access.keys import ApiKey, digest, key_id, matches, new_key, presented_key
from service.access.quota import FileQuotas, MemoryQuotas, admit
from service.access.store import KeyFile, read_key_file
from service.errors import Forbidden, RateLimited, RequestTooLarge, Unauthorized
from tests.conftest import API_KEYS_SECRET, ROOT, write_api_keys

SECRET = API_KEYS_SECRET


def test_a_new_key_is_random_well_formed_and_only_its_digest_is_kept():
    a, b = new_key("alice", SECRET, 0.0), new_key("alice", SECRET, 0.0)
    assert a.key != b.key and a.record.id != b.record.id
    assert key_id(a.key) == a.record.id and a.key.startswith("ick_")
    assert a.key not in json.dumps(a.record.as_record()) and a.key not in repr(a)
    assert a.record.digest == digest(SECRET, a.key) != digest(SECRET + "x", a.key)
    assert matches(a.record, a.key, SECRET)
    assert not matches(a.record, b.key, SECRET) and not matches(a.record, a.key, SECRET + "x")
    assert not matches(a.record, a.key[:-1] + ("A" if a.key[-1] != "A" else "B"), SECRET)


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "ключ", 'a"b'])
def test_names_are_safe_metric_labels(name):
    with pytest.raises(ValueError):
        new_key(name, SECRET, 0.0)


@pytest.mark.parametrize("value", [0, -1.0])
def test_quotas_must_be_positive(value):
    with pytest.raises(ValueError):
        new_key("alice", SECRET, 0.0, requests_per_second=value)


@pytest.mark.parametrize("headers, presented", [
    ({}, None),
    ({"X-API-Key": " k "}, "k"),
    ({"Authorization": "Bearer k"}, "k"),
    ({"Authorization": "bearer  k"}, "k"),
    ({"Authorization": "Basic dXNlcjpwdw=="}, ""),
    ({"X-API-Key": "k", "Authorization": "Bearer other"}, "k"),
    ({"X-API-Key": "k" * 257}, ""),
])
def test_the_key_a_request_presents(headers, presented):
    assert presented_key(headers) == presented


@pytest.mark.parametrize("text", ["", "ick_", "ick_zzzzzzzzzzzz_" + "a" * 43, "ick_0123456789ab_" + "a" * 42,
                                  "xyz_0123456789ab_" + "a" * 43])
def test_malformed_keys_have_no_id(text):
    assert key_id(text) is None


def test_gcra_admits_a_burst_then_paces_at_the_rate():
    tat, now, admitted = 0.0, 100.0, 0
    for _ in range(10):  # 5 at once, then none
        new, wait = admit(tat, now, 1, rate=2.0, burst=5)
        if wait == 0:
            tat, admitted = new, admitted + 1
    assert admitted == 5
    assert admit(tat, now, 1, 2.0, 5)[1] == pytest.approx(0.5)  # one more in half a second
    assert admit(tat, now + 0.5, 1, 2.0, 5)[1] == 0
    assert admit(tat, now + 2.5, 5, 2.0, 5)[1] == 0  # all five back after 2.5 s
    assert admit(0.0, now, 6, 2.0, 5)[1] == float("inf")  # more than the bucket holds never fits


def test_a_batch_costs_its_size():
    new, wait = admit(0.0, 0.0, 32, rate=40 / 60, burst=40)
    assert wait == 0
    _, wait = admit(new, 0.0, 32, 40 / 60, 40)
    assert wait == pytest.approx(24 * 60 / 40)  # 24 images short, at 40 a minute


def _spend(folder, cell, attempts, results):
    quotas = FileQuotas(folder)
    results.put(sum(quotas.take(cell, 1, 0.001, 50) == 0 for _ in range(attempts)))


def test_file_quotas_are_exact_across_processes(tmp_path):
    """Four processes race for one bucket of 50 that does not refill during the test: exactly 50 pass."""
    results = multiprocessing.get_context("fork").Queue()
    processes = [multiprocessing.get_context("fork").Process(target=_spend, args=(tmp_path, "k.requests", 40, results))
                 for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    assert sum(results.get(timeout=5) for _ in processes) == 50


def test_the_gate_refuses_with_the_right_errors_and_charges_before_work(tmp_path):
    keys = write_api_keys(tmp_path / "keys.json", full={}, narrow={"models": ("cifar10",)},
                          slow={"requests_per_second": 0.01, "burst": 2}, few={"images_per_minute": 10})
    gate = AccessGate(KeyFile(tmp_path / "keys.json"), MemoryQuotas(), SECRET)
    with pytest.raises(Unauthorized) as missing:
        gate.authenticate({})
    assert missing.value.headers["WWW-Authenticate"].startswith("Bearer")
    for wrong in ("nonsense", keys["full"][:-2] + "xx", keys["full"].replace("ick_", "ick-")):
        with pytest.raises(Forbidden):
            gate.authenticate({"X-API-Key": wrong})
    assert gate.authenticate({"Authorization": f"Bearer {keys['full']}"}).name == "full"
    narrow = gate.authenticate({"X-API-Key": keys["narrow"]})
    gate.check_model(narrow, "cifar10")
    with pytest.raises(Forbidden, match="may not call model 'fashion_mnist'"):
        gate.check_model(narrow, "fashion_mnist")
    slow = {"X-API-Key": keys["slow"]}
    gate.authenticate(slow), gate.authenticate(slow)
    with pytest.raises(RateLimited) as limited:
        gate.authenticate(slow)
    assert 1 <= int(limited.value.headers["Retry-After"]) <= 100
    few = gate.authenticate({"X-API-Key": keys["few"]})
    gate.charge_images(few, 8)
    with pytest.raises(RateLimited):
        gate.charge_images(few, 3)
    with pytest.raises(RequestTooLarge):
        gate.charge_images(few, 11)


def test_the_keys_file_is_read_again_when_it_changes(tmp_path):
    path = tmp_path / "keys.json"
    keys = write_api_keys(path, alice={}, carol={})
    clock = [0.0]
    source = KeyFile(path, clock=lambda: clock[0])
    alice, carol = (source.lookup(key_id(keys[name])) for name in ("alice", "carol"))
    assert alice.name == "alice" and carol.name == "carol"
    assert source.revoke("alice", time.time())
    assert source.lookup(alice.id) is not None  # not looked at again yet
    clock[0] += 1.0
    assert source.lookup(alice.id) is None and source.lookup(carol.id) == carol
    path.write_text("{ not json")  # a bad edit is logged, and the keys read before stay in force
    clock[0] += 1.0
    assert source.lookup(carol.id) == carol and source.lookup(alice.id) is None
    write_api_keys(path.with_name("fresh.json"), dave={})
    os.replace(path.with_name("fresh.json"), path)  # a good file again is read
    clock[0] += 1.0
    assert source.lookup(carol.id) is None and len(source.live) == 1


def test_a_broken_keys_file_stops_the_worker_at_start(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": []}))
    with pytest.raises(ValueError, match="format"):
        KeyFile(path)
    assert KeyFile(tmp_path / "absent.json").lookup("0" * 12) is None  # absent: no key yet, and said so


def _cli(env, *args, check=True):
    return subprocess.run([sys.executable, "-m", "service", "keys", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=check, timeout=60)


def test_the_cli_adds_lists_and_revokes_without_ever_showing_a_key_twice(tmp_path):
    env = {**os.environ, "API_KEYS_FILE": str(tmp_path / "keys.json"), "API_KEYS_SECRET": SECRET,
           "MODELS_DIR": str(ROOT / "models")}
    added = _cli(env, "add", "ci", "--models", "fashion_mnist,mnist", "--requests-per-second", "5",
                 "--images-per-minute", "600")
    key = added.stdout.strip()
    assert "not published" not in added.stderr
    typo = _cli(env, "add", "typo", "--models", "fashion_mnsit")
    assert "fashion_mnsit not published" in typo.stderr and key_id(typo.stdout.strip())
    assert key_id(key)
    stored = read_key_file(tmp_path / "keys.json")
    assert [k.name for k in stored] == ["ci", "typo"] and matches(stored[0], key, SECRET)
    assert oct((tmp_path / "keys.json").stat().st_mode)[-3:] == "600"
    assert _cli(env, "add", "ci", check=False).returncode != 0  # a live name is not reused
    listing = _cli(env, "list").stdout
    assert "ci" in listing and "fashion_mnist,mnist" in listing and key not in listing
    assert stored[0].digest not in _cli(env, "list", "--json").stdout
    assert _cli(env, "revoke", "ci").returncode == 0
    assert [k.revoked_at is not None for k in read_key_file(tmp_path / "keys.json")] == [True, False]
    assert _cli(env, "revoke", "ci", check=False).returncode == 1
    assert _cli({**env, "API_KEYS_SECRET": ""}, "list", check=False).returncode == 2  # settings as the server's


def test_records_survive_their_round_trip():
    record = new_key("a", SECRET, 1.5, models=("x",), requests_per_second=2.5, burst=3, images_per_minute=9).record
    assert ApiKey.from_record(json.loads(json.dumps(record.as_record()))) == record
