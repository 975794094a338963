"""What an API key is: its wire form, its digest at rest, and the record that says what it may do.

A key is ``ick_<id>_<secret>``: the id (public, 12 hex digits) finds the record, and the record holds only
HMAC-SHA256(``API_KEYS_SECRET``, key). The key itself is shown once, when it is made, and never stored or logged;
a stolen keys file or table is of no use without the server's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

PREFIX = "ick_"
KEY_PATTERN = re.compile(r"ick_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_PRESENTED_LENGTH = 256  # longer header values are refused unread


@dataclass(frozen=True)
class ApiKey:
    """A key's record: its name (the metrics label), the models it may call (None: all) and its quotas (None:
    unlimited). ``burst`` is how many requests may come at once before ``requests_per_second`` paces them."""

    id: str
    name: str
    digest: str
    models: tuple[str, ...] | None = None
    requests_per_second: float | None = None
    burst: int | None = None
    images_per_minute: int | None = None
    created_at: float = 0.0
    revoked_at: float | None = None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    @property
    def request_burst(self) -> int:
        """A full bucket: the burst given, else one second's worth (at least one request)."""
        if self.burst is not None:
            return self.burst
        return max(1, round(self.requests_per_second or 1))

    def as_record(self) -> dict:
        record = asdict(self)
        record["models"] = list(self.models) if self.models is not None else None
        return record

    @classmethod
    def from_record(cls, record: Mapping) -> ApiKey:
        models = record.get("models")
        return cls(id=str(record["id"]), name=str(record["name"]), digest=str(record["digest"]),
                   models=tuple(models) if models is not None else None,
                   requests_per_second=_optional(float, record.get("requests_per_second")),
                   burst=_optional(int, record.get("burst")),
                   images_per_minute=_optional(int, record.get("images_per_minute")),
                   created_at=float(record.get("created_at") or 0.0),
                   revoked_at=_optional(float, record.get("revoked_at")))

    def describe(self) -> dict:
        """What ``keys list`` shows and the logs may carry: everything but the digest."""
        return {k: v for k, v in self.as_record().items() if k != "digest"}


def _optional(kind, value):
    return None if value is None else kind(value)


@dataclass(frozen=True)
class NewKey:
    """A key just made: the record to store and the key to hand over, once."""

    record: ApiKey
    key: str = field(repr=False)


def new_key(name: str, secret: str, now: float, *, models: tuple[str, ...] | None = None,
            requests_per_second: float | None = None, burst: int | None = None,
            images_per_minute: int | None = None) -> NewKey:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError("a key's name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or "
                         "digit (it becomes a metrics label)")
    for label, value in (("requests per second", requests_per_second), ("burst", burst),
                         ("images per minute", images_per_minute)):
        if value is not None and not value > 0:
            raise ValueError(f"{label} must be above 0")
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKey(key_id, name, digest(secret, key), models, requests_per_second, burst, images_per_minute, now)
    return NewKey(record, key)


def digest(secret: str, key: str) -> str:
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()


def key_id(presented: str) -> str | None:
    """The id part of a well-formed key, else None (the rest is checked against the record's digest)."""
    match = KEY_PATTERN.fullmatch(presented)
    return match.group(1) if match else None


def matches(record: ApiKey, presented: str, secret: str) -> bool:
    """Whether ``presented`` is the key ``record`` was made for, compared in constant time."""
    return hmac.compare_digest(digest(secret, presented), record.digest)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request sends: ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``; None when it sends
    neither. A header of another scheme or an overlong value counts as a key that matches nothing."""
    value = headers.get("X-API-Key")
    if value is None:
        authorization = headers.get("Authorization")
        if authorization is None:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return ""
    value = value.strip()
    return value if len(value) <= MAX_PRESENTED_LENGTH else ""
