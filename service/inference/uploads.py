"""The uploaded image bytes of a /predict request: multipart ``image`` fields, or a raw image body.

Multipart bodies are parsed with the incremental parser of the ``multipart`` library (by Bottle's author)
rather than ``request.files``, which costs several times as much for one small image (docs/performance.md has
the figures ``make bench`` prints). It streams from the request, keeps only the image parts, in memory (the body is already capped by
MAX_UPLOAD_BYTES), and stops at the first image over MAX_IMAGES_PER_REQUEST.
"""

from __future__ import annotations

import re
from typing import BinaryIO, Protocol

import multipart

from service.errors import InvalidUpload, MissingImage, TooManyImages, UnsupportedMediaType

IMAGE_FIELD = "image"
RAW_BODY_TYPES = ("application/octet-stream",)
EXTRA_FIELDS_ALLOWED = 16  # other form fields are ignored, up to this many


MAX_FIELD_BYTES = 1024  # a text field (a label, a model name, an id) is short


class Upload(Protocol):
    """What is read of a request: its body's stream and how the body is described (a Flask request is one)."""

    stream: BinaryIO
    mimetype: str
    mimetype_params: dict[str, str]
    content_length: int | None


def read_uploads(request: Upload, max_images: int, max_bytes: int) -> list[bytes]:
    """The uploaded images, in order; a client error for anything that carries none, or too many."""
    return read_form(request, max_images, max_bytes)[0]


def read_form(request: Upload, max_images: int, max_bytes: int) -> tuple[list[bytes], dict[str, str | None]]:
    """The uploaded images and, from a multipart body, its other text fields (None for one over
    MAX_FIELD_BYTES or not UTF-8: too long to be a label, a model name or an id)."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        return _multipart_images(request, max_images, max_bytes)
    return _raw_image(request), {}


def _raw_image(request: Upload) -> list[bytes]:
    mimetype = request.mimetype
    if mimetype.startswith("image/") or mimetype in RAW_BODY_TYPES:
        return [request.stream.read()]
    if not mimetype and not request.content_length:
        raise MissingImage(f"send an image as multipart field '{IMAGE_FIELD}' or as a raw image/* body")
    raise UnsupportedMediaType(f"Content-Type {mimetype!r} is not accepted; send multipart/form-data with "
                               f"an '{IMAGE_FIELD}' field, or a raw body with an image/* Content-Type")


def _multipart_images(request: Upload, max_images: int, max_bytes: int) -> tuple[list[bytes], dict[str, str | None]]:
    boundary = request.mimetype_params.get("boundary")
    if not boundary:
        raise InvalidUpload("the multipart Content-Type has no boundary")
    images, other_fields = [], {}
    chunks: list[bytes] | None = None  # the body of the part being read; None inside parts not kept
    field_name: str | None = None  # the text field being read
    try:
        with multipart.PushMultipartParser(
            boundary,
            request.content_length if request.content_length is not None else -1,
            max_segment_size=max_bytes,
            max_segment_count=max_images + EXTRA_FIELDS_ALLOWED,
        ) as parser:
            # Werkzeug's stream: reading past MAX_UPLOAD_BYTES raises its 413.
            for event in parser.parse_blocking(request.stream.read):
                if isinstance(event, multipart.MultipartSegment):
                    if event.name == IMAGE_FIELD:
                        if len(images) == max_images:
                            raise TooManyImages(f"more than {max_images} images in one request "
                                                "(MAX_IMAGES_PER_REQUEST)")
                        chunks, field_name = [], None
                    else:
                        chunks, field_name = [], event.name
                elif event is None:  # the end of a part
                    if chunks is not None and field_name is None:
                        images.append(b"".join(chunks))
                    elif chunks is not None:
                        other_fields[field_name] = _text_field(field_name, b"".join(chunks))
                    chunks, field_name = None, None
                elif chunks is not None:
                    chunks.append(event)
                    if field_name is not None and sum(map(len, chunks)) > MAX_FIELD_BYTES:
                        other_fields[field_name] = None  # too long to be a label or a name: not kept
                        chunks, field_name = None, None
    except multipart.MultipartError as exc:  # also ParserLimitReached: too many fields, too large parts
        raise InvalidUpload(f"the multipart body is malformed: {exc}") from exc
    if not images:
        received = f" (got: {', '.join(sorted(other_fields))})" if other_fields else ""
        raise MissingImage(f"no multipart field named '{IMAGE_FIELD}'{received}")
    return images, other_fields


def _text_field(name: str, data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII digits only, and few enough that int() is cheap


def whole_number(text: str | None) -> int | None:
    """A non-negative whole number written in ASCII digits (at most 18), else None: ``int()`` alone would take
    other scripts' digits ("³") and thousands of digits, and fail or spend its time on them."""
    return int(text) if text is not None and DIGITS.fullmatch(text) else None
