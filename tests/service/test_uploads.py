"""Reading uploads: multipart fields, raw bodies, and a clear client error for everything else."""

import pytest
from flask import Flask

from service.errors import InvalidUpload, MissingImage, TooManyImages, UnsupportedMediaType
from service.inference.uploads import read_uploads

BOUNDARY = "testboundary42"


def body(*parts: tuple[str, bytes], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    chunks = [(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"f\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n" for name, data in parts]
    return b"".join(chunks) + (f"--{boundary}--\r\n".encode() if close else b"")


def read(data: bytes, content_type: str, max_images: int = 4, max_bytes: int = 1 << 20) -> list[bytes]:
    app = Flask(__name__)
    with app.test_request_context("/predict", method="POST", data=data, content_type=content_type):
        from flask import request

        return read_uploads(request, max_images, max_bytes)


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def test_image_fields_are_read_in_order_and_other_fields_ignored():
    data = body(("image", b"\x89PNG first"), ("note", b"hello"), ("image", b"second\r\n--almost"))
    assert read(data, MULTIPART) == [b"\x89PNG first", b"second\r\n--almost"]


def test_a_raw_image_body_is_one_upload():
    assert read(b"\xff\xd8\xff raw", "image/jpeg") == [b"\xff\xd8\xff raw"]
    assert read(b"bytes", "application/octet-stream") == [b"bytes"]


def test_no_image_field_names_what_was_sent():
    with pytest.raises(MissingImage, match="got: photo"):
        read(body(("photo", b"x")), MULTIPART)
    with pytest.raises(MissingImage):
        read(b"", "")


def test_too_many_images_stop_the_parse():
    with pytest.raises(TooManyImages, match="more than 4"):
        read(body(*[("image", b"x")] * 5), MULTIPART)
    with pytest.raises(InvalidUpload):  # the parser's own part limit: max images + 16 other fields
        read(body(*[("field", b"x")] * 40), MULTIPART)


@pytest.mark.parametrize("data, content_type", [
    (body(("image", b"x"), close=False), MULTIPART),  # never closed
    (body(("image", b"x"), boundary="other"), MULTIPART),  # the declared boundary never appears
    (b"--" + BOUNDARY.encode() + b"\r\nno headers end", MULTIPART),
    (body(("image", b"x")), "multipart/form-data"),  # no boundary declared
])
def test_malformed_multipart_is_a_clear_400(data, content_type):
    with pytest.raises(InvalidUpload):
        read(data, content_type)


def test_other_content_types_are_415():
    with pytest.raises(UnsupportedMediaType, match="application/json"):
        read(b"{}", "application/json")


def test_bodies_over_the_memory_limit_are_refused():
    with pytest.raises(InvalidUpload):
        read(body(("image", b"x" * 5000)), MULTIPART, max_bytes=1000)
