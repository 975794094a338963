"""The feedback store on SQLite (several processes writing at once) and on a real PostgreSQL server."""

import multiprocessing
import time

import numpy as np
import pytest
import sqlalchemy as sa

from contract.feedback_store import FeedbackStore, decode_pixels, encode_pixels, make_engine
from contract.ids import input_id


def _pixels(seed: int, shape=(28, 28)) -> np.ndarray:
    """A normalized input as the service makes one: uint8 values / 255."""
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.float32) / np.float32(255)


def test_the_id_is_the_content_hash_of_the_normalized_pixels():
    a, b = _pixels(0), _pixels(1)
    assert input_id(a) == input_id(a.copy()) != input_id(b)
    assert len(input_id(a)) == 64 and int(input_id(a), 16) >= 0


def test_stored_images_are_exactly_the_normalized_pixels():
    for shape in ((28, 28), (32, 32, 3)):
        pixels = _pixels(2, shape)
        restored = decode_pixels(encode_pixels(pixels)).astype(np.float32) / np.float32(255)
        assert np.array_equal(restored, pixels) and input_id(restored) == input_id(pixels)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    if url:  # one server for the module: each test starts with no tables, which the store then creates
        engine = make_engine(url)
        with engine.begin() as connection:
            connection.execute(sa.text("DROP TABLE IF EXISTS feedback, retained_predictions, feedback_locks"))
        engine.dispose()
    store = FeedbackStore(tmp_path / "feedback", url)
    yield store
    store.close()


def test_sqlite_runs_in_wal_mode(tmp_path):
    store = FeedbackStore(tmp_path)
    with store.engine.connect() as connection:
        assert connection.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
    assert (tmp_path / "feedback.db").exists()


def test_the_same_image_with_the_same_label_is_stored_once(store):
    pixels = _pixels(3)
    image_id = input_id(pixels)
    assert store.add_feedback(image_id, pixels, "fashion_mnist", 2, "Coat", "Shirt") == "stored"
    assert store.add_feedback(image_id, pixels, "fashion_mnist", 2, "Coat", "Shirt") == "duplicate"
    assert store.add_feedback(image_id, pixels, "fashion_mnist", 2, "Coat", "Coat") == "stored"  # another label
    assert store.add_feedback(image_id, pixels, "cifar10", 1, "cat", "Shirt") == "stored"  # another model
    items = store.feedback_items("fashion_mnist")
    assert sorted(i.true_label for i in items) == ["Coat", "Shirt"]
    assert np.array_equal(store.read_image(items[0].image_file), np.round(pixels * 255).astype(np.uint8))


def test_stats_count_labels_and_agreement_with_the_served_prediction(store):
    for seed, predicted, true in [(10, "Coat", "Coat"), (11, "Coat", "Shirt"), (12, "Bag", "Bag"), (13, "Bag", "Bag")]:
        pixels = _pixels(seed)
        store.add_feedback(input_id(pixels), pixels, "fashion_mnist", 2, predicted, true)
    stats = store.stats("fashion_mnist")
    assert stats["items"] == 4 and stats["agreement"] == 0.75
    assert stats["per_label"] == {"Bag": {"items": 2, "agreement": 1.0}, "Coat": {"items": 1, "agreement": 1.0},
                                  "Shirt": {"items": 1, "agreement": 0.0}}
    assert store.stats("cifar10") == {"model": "cifar10", "items": 0, "agreement": None, "per_label": {}}


def test_deleting_feedback_removes_rows_and_the_image(store):
    pixels = _pixels(20)
    image_id = input_id(pixels)
    store.add_feedback(image_id, pixels, "fashion_mnist", 2, "Coat", "Shirt")
    path = store.images / store.feedback_items("fashion_mnist")[0].image_file
    assert path.exists()
    assert store.delete_feedback("fashion_mnist", image_id) == 1
    assert store.feedback_count("fashion_mnist") == 0 and not path.exists()


def test_retained_predictions_expire_by_age_and_by_size(store):
    ids = []
    for seed in range(5):
        pixels = _pixels(30 + seed)
        ids.append(input_id(pixels))
        store.retain(ids[-1], pixels, "fashion_mnist", 2, "Coat")
        store.retain(ids[-1], pixels, "fashion_mnist", 2, "Coat")  # a repeat refreshes, never duplicates
    assert store.retained_summary()["items"] == 5
    found = store.find_retained("fashion_mnist", ids[0], 3600)
    assert found is not None and found.predicted_label == "Coat" and found.model_version == 2
    assert store.find_retained("cifar10", ids[0], 3600) is None
    size = store.retained_summary()["bytes"] // 5
    assert store.prune_retained(3600, max_bytes=size * 3) == 2  # the two oldest go
    assert store.retained_summary()["items"] == 3
    assert store.find_retained("fashion_mnist", ids[0], 3600) is None
    time.sleep(0.05)
    assert store.prune_retained(0.01, max_bytes=10**9) == 3
    assert store.retained_summary() == {"items": 0, "bytes": 0}
    assert not any(store.images.rglob("*.png"))


def _write_feedback(folder, url, worker, count, max_items=None, start=None):
    store = FeedbackStore(folder, url)
    if start is not None:
        start.wait(60)  # every writer at once, as a burst of concurrent requests
    for i in range(count):
        pixels = _pixels(1000 * worker + i)
        store.add_feedback(input_id(pixels), pixels, "fashion_mnist", 2, "Coat", "Shirt", max_items=max_items)
    store.close()


def test_several_processes_write_at_once(store):
    """Like several gunicorn workers: separate processes, one database, no write lost."""
    url = None if store.engine.dialect.name == "sqlite" else store.engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_feedback, args=(store.folder, url, w, 40)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    assert store.feedback_count("fashion_mnist") == 160


def test_the_cap_holds_exactly_under_concurrent_writers(store):
    """FEEDBACK_MAX_ITEMS=50 with four processes writing 24 items each at once: 50 stored, not one more, and no
    image left on disk for the refused ones."""
    url = None if store.engine.dialect.name == "sqlite" else store.engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [context.Process(target=_write_feedback, args=(store.folder, url, w, 24, 50, start))
               for w in range(4)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    assert store.feedback_count("fashion_mnist") == 50
    assert len(list(store.images.rglob("*.png"))) == 50
    pixels = _pixels(99_999)
    assert store.add_feedback(input_id(pixels), pixels, "fashion_mnist", 2, "Coat", "Shirt", max_items=50) == "full"


def test_the_labeling_queue_ranks_unsure_then_unusual_and_skips_labeled(store):
    from contract.feedback_store import Ranking

    rows = {  # id seed: (set, ood score)
        1: (["Coat"], 1.0), 2: (["Coat", "Shirt"], 0.5), 3: (["Bag"], 9.0), 4: (["Shirt", "T-shirt/top"], 4.0),
        5: (None, None), 6: ([], 2.0)}
    for seed, (labels, score) in rows.items():
        pixels = _pixels(seed)
        store.retain(input_id(pixels), pixels, "fashion_mnist", 6, "Coat",
                     Ranking(labels, score, None if score is None else 0.01))
    order = [next(s for s in rows if input_id(_pixels(s)) == item.image_id)
             for item in store.labeling_queue("fashion_mnist", 10, 3600)]
    assert order == [4, 2, 3, 6, 1, 5]
    queued = store.labeling_queue("fashion_mnist", 1, 3600)[0]
    assert queued.unsure and queued.set_labels == ["Shirt", "T-shirt/top"] and queued.ood_score == 4.0
    store.add_feedback(input_id(_pixels(4)), _pixels(4), "fashion_mnist", 6, "Shirt", "Shirt", max_items=100)
    assert [item.image_id for item in store.labeling_queue("fashion_mnist", 10, 3600)][0] == input_id(_pixels(2))
    assert store.labeling_queue("cifar10", 10, 3600) == []


def test_a_database_made_before_the_queue_gains_its_columns(tmp_path):
    """Columns added to the retained table later are added to an existing database on first use."""
    engine = make_engine(f"sqlite:///{tmp_path / 'feedback.db'}")
    with engine.begin() as connection:
        connection.execute(sa.text(
            "CREATE TABLE retained_predictions (model VARCHAR(128) NOT NULL, image_id VARCHAR(64) NOT NULL, "
            "model_version INTEGER NOT NULL, predicted_label VARCHAR(256) NOT NULL, created_at FLOAT NOT NULL, "
            "image_file VARCHAR(256) NOT NULL, size_bytes INTEGER NOT NULL, PRIMARY KEY (model, image_id))"))
        connection.execute(sa.text(
            "INSERT INTO retained_predictions VALUES ('fashion_mnist', :id, 5, 'Coat', :now, 'x.png', 10)"),
            {"id": "a" * 64, "now": time.time()})
    engine.dispose()
    store = FeedbackStore(tmp_path)
    queued = store.labeling_queue("fashion_mnist", 10, 3600)
    assert [item.image_id for item in queued] == ["a" * 64] and queued[0].set_labels is None
    columns = {c["name"] for c in sa.inspect(store.engine).get_columns("retained_predictions")}
    assert {"set_labels", "set_size", "ood_score", "ood_p_value"} <= columns
    store.close()
