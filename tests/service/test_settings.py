from pathlib import Path

import pytest

from service.settings import Settings


def test_defaults_follow_the_documented_conventions():
    settings = Settings.from_env({})
    assert (settings.port, settings.host, settings.models_dir) == (8000, "127.0.0.1", Path("models"))
    assert settings.runtime == "auto" and settings.default_model == "fashion_mnist"


def test_values_are_read_and_typed_from_the_environment():
    settings = Settings.from_env({"PORT": "9001", "HOST": "0.0.0.0", "MODELS_DIR": "/srv/models",
                                  "MAX_UPLOAD_BYTES": "1024", "MODEL_RELOAD_SECONDS": "0.5", "ACCESS_LOG": "yes"})
    assert settings.port == 9001 and settings.host == "0.0.0.0" and settings.models_dir == Path("/srv/models")
    assert settings.max_upload_bytes == 1024 and settings.reload_interval_seconds == 0.5 and settings.access_log


@pytest.mark.parametrize("environ, message", [
    ({"PORT": "eighty"}, "PORT='eighty' is not a valid int"),
    ({"MODEL_RUNTIME": "torch"}, "MODEL_RUNTIME must be one of auto, onnx_int8, onnx, keras"),
    ({"MAX_IMAGES_PER_REQUEST": "0"}, "MAX_IMAGES_PER_REQUEST must be at least 1"),
    ({"ACCESS_LOG": "maybe"}, "ACCESS_LOG='maybe' is not a valid bool"),
])
def test_bad_values_name_the_variable(environ, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(environ)


def test_the_front_door_defaults_and_worker_class():
    settings = Settings.from_env({})
    assert (settings.web_concurrency, settings.worker_class, settings.worker_connections) == (None, "gevent", 1000)
    assert settings.workers == settings.sizing.workers >= 1  # one per CPU the cgroup allows
    assert settings.gunicorn_worker_class == "service.front_door.worker.ServiceWorker"
    assert (settings.header_timeout_seconds, settings.body_timeout_seconds, settings.keepalive_seconds) == (10, 30, 65)
    assert (settings.drain_seconds, settings.graceful_timeout_seconds, settings.worker_timeout_seconds) == (5, 20, 30)
    sync = Settings.from_env({"WORKER_CLASS": "sync"})
    assert sync.gunicorn_worker_class == "service.front_door.worker.SyncServiceWorker"


def test_the_front_door_settings_are_read_from_the_environment():
    settings = Settings.from_env({"WEB_CONCURRENCY": "4", "WORKER_CONNECTIONS": "50", "HEADER_TIMEOUT_SECONDS": "2.5",
                                  "BODY_TIMEOUT_SECONDS": "7", "KEEPALIVE_SECONDS": "75", "DRAIN_SECONDS": "0",
                                  "GRACEFUL_TIMEOUT_SECONDS": "3", "WORKER_TIMEOUT_SECONDS": "60"})
    assert (settings.workers, settings.worker_connections) == (4, 50)
    assert (settings.header_timeout_seconds, settings.body_timeout_seconds, settings.keepalive_seconds) == (2.5, 7, 75)
    assert (settings.drain_seconds, settings.graceful_timeout_seconds, settings.worker_timeout_seconds) == (0, 3, 60)


@pytest.mark.parametrize("environ, message", [
    ({"WORKER_CLASS": "tornado"}, "WORKER_CLASS must be one of gevent, sync"),
    ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY must be at least 1"),
    ({"WORKER_CONNECTIONS": "0"}, "WORKER_CONNECTIONS must be at least 1"),
    ({"HEADER_TIMEOUT_SECONDS": "0"}, "HEADER_TIMEOUT_SECONDS must be more than 0"),
    ({"BODY_TIMEOUT_SECONDS": "-1"}, "BODY_TIMEOUT_SECONDS must be more than 0"),
    ({"KEEPALIVE_SECONDS": "0"}, "KEEPALIVE_SECONDS must be more than 0"),
    ({"GRACEFUL_TIMEOUT_SECONDS": "0"}, "GRACEFUL_TIMEOUT_SECONDS must be more than 0"),
    ({"WORKER_TIMEOUT_SECONDS": "0"}, "WORKER_TIMEOUT_SECONDS must be more than 0"),
    ({"DRAIN_SECONDS": "-1"}, "DRAIN_SECONDS must be at least 0"),
    ({"KEEPALIVE_SECONDS": "long"}, "KEEPALIVE_SECONDS='long' is not a valid float"),
])
def test_bad_front_door_values_name_the_variable(environ, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(environ)


@pytest.mark.parametrize("environ, message", [
    ({"METRICS_PORT": "8000"}, "METRICS_PORT must differ from PORT"),
    ({"API_KEYS_FILE": "keys.json"}, "API keys need API_KEYS_SECRET"),
    ({"API_KEYS_FILE": "keys.json", "API_KEYS_SECRET": "short"}, "at least 16 characters"),
    ({"API_KEYS_DATABASE": "1", "API_KEYS_SECRET": "x" * 16}, "set DATABASE_URL"),
    ({"API_KEYS_DATABASE": "1", "API_KEYS_FILE": "k.json", "DATABASE_URL": "sqlite://", "API_KEYS_SECRET": "x" * 16},
     "set one"),
])
def test_settings_that_contradict_each_other_are_refused(environ, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(environ)


def test_the_gunicorn_config_takes_every_front_door_setting_from_the_environment(monkeypatch, tmp_path):
    import runpy

    for name, value in {"WEB_CONCURRENCY": "3", "WORKER_CONNECTIONS": "77", "KEEPALIVE_SECONDS": "4.2",
                        "WORKER_TIMEOUT_SECONDS": "45", "DRAIN_SECONDS": "1.5", "GRACEFUL_TIMEOUT_SECONDS": "10",
                        "PORT": "9123", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}.items():
        monkeypatch.setenv(name, value)
    config = runpy.run_path(str(Path(__file__).resolve().parents[2] / "service" / "front_door" / "gunicorn.conf.py"))
    assert (config["workers"], config["worker_connections"], config["keepalive"], config["timeout"]) == (3, 77, 5, 45)
    assert config["graceful_timeout"] == 12 and config["bind"] == ["127.0.0.1:9123"]
    monkeypatch.setenv("METRICS_PORT", "9124")
    config = runpy.run_path(str(Path(__file__).resolve().parents[2] / "service" / "front_door" / "gunicorn.conf.py"))
    assert config["bind"] == ["127.0.0.1:9123", "127.0.0.1:9124"]
    assert config["worker_class"] == "service.front_door.worker.ServiceWorker"


def documented_table(guide: str) -> str:
    """The settings table between its markers in a guide of docs/."""
    text = (Path(__file__).resolve().parents[2] / "docs" / guide).read_text()
    start = text.index("-->\n", text.index("<!-- settings table:")) + 4
    return text[start:text.index("<!-- end of settings table -->")]


def test_the_documented_configuration_table_is_the_declared_one():
    """docs/operations.md shows exactly what service/settings.py declares (python -m service.settings writes it)."""
    from contract.config import markdown_table

    assert documented_table("operations.md") == markdown_table(Settings)


def test_log_level_and_every_bound_are_checked_with_the_variable_named():
    with pytest.raises(ValueError, match="LOG_LEVEL must be one of debug, info, warning, error, critical"):
        Settings.from_env({"LOG_LEVEL": "verbose"})
    with pytest.raises(ValueError, match="LOW_CONFIDENCE_THRESHOLD must be at most 1"):
        Settings.from_env({"LOW_CONFIDENCE_THRESHOLD": "1.5"})
    with pytest.raises(ValueError, match="MAX_BUFFERED_BYTES must hold at least one whole request"):
        Settings.from_env({"MAX_BUFFERED_BYTES": "1024"})
    assert Settings.from_env({"FEEDBACK_DIR": "/srv/feedback"}).feedback_folder == Path("/srv/feedback")
    assert Settings.from_env({"MODELS_DIR": "/m"}).feedback_folder == Path("/m/.feedback")
