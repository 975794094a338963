"""The gate every protected request passes when API keys are on: who is calling, may they call this model, and
is it within their quotas; each refusal counted per key and reason, each raised as the error its protocol
renders (401 no key, 403 wrong key or model, 429 past a quota with ``Retry-After``).

Costs are decided before the work: a request is charged when it arrives, its images as soon as their number
is known and before the first is decoded.
"""

from __future__ import annotations

import math
from pathlib import Path

from service.access.keys import ApiKey, key_id, matches, presented_key
from service.access.quota import FileQuotas, MemoryQuotas, Quotas
from service.access.store import KeyFile, KeySource
from service.errors import Forbidden, RateLimited, RequestTooLarge, Unauthorized
from service.observability import metrics
from service.settings import Settings

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="image-classifier"'}


def key_source(settings: Settings, serving: bool = True) -> KeySource:
    """Where this deployment keeps its keys (the database module, and SQLAlchemy, only when it is there)."""
    if settings.api_keys_database:
        from service.access.database import Database, KeyTable

        return KeyTable(Database(settings.database_url))
    return KeyFile(settings.api_keys_file, serving=serving)


def build_gate(settings: Settings, shared_folder: Path | None) -> AccessGate | None:
    """The gate this deployment's settings ask for, or None with keys off. Quotas live with the keys' database
    when there is one (every replica), else in ``shared_folder`` (this replica's workers), else in memory."""
    if not settings.api_keys_enabled:
        return None
    source = key_source(settings)
    if settings.api_keys_database:
        from service.access.database import DatabaseQuotas

        quotas = DatabaseQuotas(source.database)
    else:
        quotas = FileQuotas(shared_folder / "quotas") if shared_folder else MemoryQuotas()
    return AccessGate(source, quotas, settings.api_keys_secret)


class AccessGate:
    def __init__(self, source: KeySource, quotas: Quotas, secret: str):
        self.source = source
        self.quotas = quotas
        self.secret = secret

    def authenticate(self, headers) -> ApiKey:
        """The caller's key, charged one request; or the error to answer with."""
        presented = presented_key(headers)
        if presented is None:
            refuse("", "missing")
            raise Unauthorized("this server needs an API key: send 'X-API-Key: <key>' or 'Authorization: Bearer "
                               "<key>'", dict(CHALLENGE))
        identifier = key_id(presented)
        record = self.source.lookup(identifier) if identifier else None
        if record is None or not matches(record, presented, self.secret):
            refuse("", "invalid")
            raise Forbidden("the API key is not valid on this server (mistyped, revoked or never issued)")
        if record.requests_per_second is not None:
            self._take(record, "requests", 1, record.requests_per_second, record.request_burst)
        metrics.series(metrics.API_KEY_REQUESTS, record.name).inc()
        return record

    def check_model(self, key: ApiKey, model: str) -> None:
        if not key.allows(model):
            refuse(key.name, "model")
            raise Forbidden(f"the API key {key.name!r} may not call model {model!r}")

    def charge_images(self, key: ApiKey, count: int) -> None:
        """Spend ``count`` of the key's images-per-minute before any of them is decoded."""
        if key.images_per_minute is not None:
            self._take(key, "images", count, key.images_per_minute / 60.0, key.images_per_minute)
        metrics.series(metrics.API_KEY_IMAGES, key.name).inc(count)

    def _take(self, key: ApiKey, quota: str, cost: int, rate: float, burst: float) -> None:
        wait = self.quotas.take(f"{key.id}.{quota}", cost, rate, burst)
        if not wait:
            return
        refuse(key.name, quota)
        if math.isinf(wait):  # waiting would not help: the request is larger than the whole quota
            raise RequestTooLarge(f"{cost} images are more than the API key {key.name!r} may send at once "
                                  f"({key.images_per_minute} a minute); send fewer per request")
        limit = (f"{key.requests_per_second:g} requests a second, {key.request_burst} at once" if quota == "requests"
                 else f"{key.images_per_minute} images a minute")
        raise RateLimited(f"the API key {key.name!r} is past its quota of {limit}; retry in {wait:.2f} s",
                          {"Retry-After": str(max(1, math.ceil(wait)))})


def refuse(name: str, reason: str) -> None:
    metrics.series(metrics.API_KEY_REFUSALS, name, reason).inc()
