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
