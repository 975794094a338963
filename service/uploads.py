"""The uploaded image bytes of a /predict request: multipart ``image`` fields, or a raw image body.

Multipart bodies are parsed with the incremental parser of the ``multipart`` library (by Bottle's author)
rather than ``request.files``: for one small image it takes about a third of Werkzeug's time (``make bench``
prints both). It streams from the request, keeps only the image parts, in memory (the body is already capped by
MAX_UPLOAD_BYTES), and stops at the first image over MAX_IMAGES_PER_REQUEST.
"""

from __future__ import annotations

import multipart
from flask import Request

from service.errors import InvalidUpload, MissingImage, TooManyImages, UnsupportedMediaType

IMAGE_FIELD = "image"
RAW_BODY_TYPES = ("application/octet-stream",)
EXTRA_FIELDS_ALLOWED = 16  # other form fields are ignored, up to this many


def read_uploads(request: Request, max_images: int, max_bytes: int) -> list[bytes]:
    """The uploaded images, in order; a client error for anything that carries none, or too many."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        return _multipart_images(request, max_images, max_bytes)
    if mimetype.startswith("image/") or mimetype in RAW_BODY_TYPES:
        return [request.get_data(cache=False)]
    if not mimetype and not request.content_length:
        raise MissingImage(f"send an image as multipart field '{IMAGE_FIELD}' or as a raw image/* body")
    raise UnsupportedMediaType(f"Content-Type {mimetype!r} is not accepted; send multipart/form-data with "
                               f"an '{IMAGE_FIELD}' field, or a raw body with an image/* Content-Type")


def _multipart_images(request: Request, max_images: int, max_bytes: int) -> list[bytes]:
    boundary = request.mimetype_params.get("boundary")
    if not boundary:
        raise InvalidUpload("the multipart Content-Type has no boundary")
    images, other_fields = [], set()
    chunks: list[bytes] | None = None  # the body of the image part being read; None inside other parts
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
                        chunks = []
                    else:
                        other_fields.add(event.name)
                        chunks = None
                elif event is None:  # the end of a part
                    if chunks is not None:
                        images.append(b"".join(chunks))
                    chunks = None
                elif chunks is not None:
                    chunks.append(event)
    except multipart.MultipartError as exc:  # also ParserLimitReached: too many fields, too large parts
        raise InvalidUpload(f"the multipart body is malformed: {exc}") from exc
    if not images:
        received = f" (got: {', '.join(sorted(other_fields))})" if other_fields else ""
        raise MissingImage(f"no multipart field named '{IMAGE_FIELD}'{received}")
    return images
