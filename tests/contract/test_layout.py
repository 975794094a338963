"""The models folder as both packages see it: what is listed, what is hidden, what is written whole."""

import json
import stat

from contract import layout
from tests.conftest import SHIPPED_MODELS, copy_current_version


def test_published_models_and_versions_skip_what_is_not_complete(tmp_path):
    version = copy_current_version(tmp_path, "fashion_mnist")
    (tmp_path / ".feedback").mkdir()  # the feedback store beside the models is not a model
    (tmp_path / "cifar10").mkdir()  # a model folder with no current pointer is not published
    staging = layout.stage_version(tmp_path, "fashion_mnist")
    (staging / layout.METADATA_FILE).write_text("{}")
    (tmp_path / "fashion_mnist" / "99").mkdir()  # a version folder without its metadata is incomplete
    assert layout.published_models(tmp_path) == ["fashion_mnist"]
    assert layout.list_versions(tmp_path, "fashion_mnist") == [version]
    assert layout.staged_folders(tmp_path, "fashion_mnist") == [staging]
    assert layout.current_version(tmp_path, "cifar10") is None


def test_the_pointer_is_replaced_whole_and_readable_by_other_users(tmp_path):
    version = copy_current_version(tmp_path, "fashion_mnist")
    layout.point_current(tmp_path, "fashion_mnist", version)
    pointer = tmp_path / "fashion_mnist" / layout.CURRENT_POINTER
    assert pointer.read_text() == f"{version}\n" and stat.S_IMODE(pointer.stat().st_mode) == 0o644
    assert [p.name for p in pointer.parent.iterdir() if p.name.startswith(".current")] == []
    pointer.write_text("not a number\n")
    assert layout.current_version(tmp_path, "fashion_mnist") is None


def test_history_is_appended_with_a_time_and_a_torn_last_line_is_skipped(tmp_path):
    layout.append_history(tmp_path, "m", {"event": "train", "version": 1})
    layout.append_history(tmp_path, "m", {"event": "rollback", "version": 1, "time": "2026-01-01T00:00:00Z"})
    with open(tmp_path / "m" / layout.HISTORY_FILE, "a") as history:
        history.write('{"event": "retra')  # a crash mid-write
    records = layout.read_history(tmp_path, "m")
    assert [r["event"] for r in records] == ["train", "rollback"] and records[1]["time"] == "2026-01-01T00:00:00Z"
    assert json.loads(json.dumps(records[0]))["time"].endswith("Z")


def test_file_hashes_are_what_the_shipped_metadata_records():
    version = layout.current_version(SHIPPED_MODELS, "cifar10")
    folder = layout.version_dir(SHIPPED_MODELS, "cifar10", version)
    recorded = json.loads((folder / layout.METADATA_FILE).read_text())["files"]
    assert all(layout.sha256_file(folder / name) == digest for name, digest in recorded.items())
