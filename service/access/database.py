"""Keys and quotas in the feedback database (``API_KEYS_DATABASE`` with ``DATABASE_URL``): every replica reads
the same keys and spends from the same buckets, so a key's quota holds across all of them.

Imported only in that mode: SQLAlchemy is about 20 MB per worker.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import sqlalchemy as sa

from contract.feedback_store import make_engine
from service.access.keys import ApiKey
from service.access.quota import MemoryQuotas, admit
from service.access.store import Recheck
from service.errors import ServiceBusy

log = logging.getLogger("service.access")

metadata = sa.MetaData()
api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("models", sa.Text),  # JSON list; NULL: every model
    sa.Column("requests_per_second", sa.Float),
    sa.Column("burst", sa.Integer),
    sa.Column("images_per_minute", sa.Integer),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)
# One row per (key, quota): the cell's theoretical arrival time (service/access/quota.py).
api_key_quotas = sa.Table(
    "api_key_quotas", metadata,
    sa.Column("cell", sa.String(64), primary_key=True),
    sa.Column("tat", sa.Float, nullable=False),
)


class Database:
    """The engine and its tables, made on first use (a database down at start does not stop a worker)."""

    def __init__(self, url: str):
        self.engine = make_engine(url)
        self.autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.ready = False
        self.lock = threading.Lock()

    def connect(self):
        """A connection whose every statement commits at once: quota takes hold a row's lock for one statement."""
        self._create_tables()
        return self.autocommit.connect()

    def begin(self):
        self._create_tables()
        return self.engine.begin()

    def _create_tables(self):
        if not self.ready:
            with self.lock:
                if not self.ready:
                    metadata.create_all(self.engine)
                    self.ready = True


class KeyTable:
    """Keys in the ``api_keys`` table; each worker reads them all again at most every ``RECHECK_SECONDS``. While
    the database is unreachable the keys read last stay in force; before any were read, requests get a 503."""

    def __init__(self, database: Database, clock: Callable[[], float] = time.monotonic):
        self.database = database
        self.recheck = Recheck(clock)
        self.live: dict[str, ApiKey] | None = None

    def lookup(self, key_id: str) -> ApiKey | None:
        self.recheck.if_due(self._reload)
        if self.live is None:
            raise ServiceBusy("the API keys database is unavailable; retry later", retry_after_seconds=5)
        return self.live.get(key_id)

    def _reload(self) -> None:
        try:
            live = {key.id: key for key in self.keys() if key.revoked_at is None}
        except sa.exc.SQLAlchemyError as error:
            log.error("API keys database unavailable, the keys read before stay in force: %s", error)
            return
        self.live = live

    def keys(self) -> list[ApiKey]:
        with self.database.begin() as connection:
            rows = connection.execute(sa.select(api_keys).order_by(api_keys.c.created_at)).mappings().all()
        return [ApiKey.from_record({**row, "models": json.loads(row["models"]) if row["models"] else None})
                for row in rows]

    def add(self, key: ApiKey) -> None:
        record = key.as_record()
        record["models"] = json.dumps(record["models"]) if record["models"] is not None else None
        with self.database.begin() as connection:
            taken = connection.execute(sa.select(api_keys.c.id).where(
                api_keys.c.name == key.name, api_keys.c.revoked_at.is_(None))).first()
            if taken:
                raise ValueError(f"a live key is already named {key.name!r}; revoke it first or pick another name")
            connection.execute(api_keys.insert().values(**record))

    def revoke(self, name: str, now: float) -> bool:
        with self.database.begin() as connection:
            result = connection.execute(api_keys.update().where(
                api_keys.c.name == name, api_keys.c.revoked_at.is_(None)).values(revoked_at=now))
        return result.rowcount > 0


class DatabaseQuotas:
    """Cells as rows. A take is one autocommitted statement that admits and records in one step (the GCRA of
    ``service.access.quota.admit``, in SQL), so a row is locked only while that statement runs; a refusal reads
    the row once more to say how long to wait.

    A statement costs about a millisecond of CPU between the worker and the database, so a worker takes a key's
    budget from the row in slices: up to a tenth of its burst, and no more than a tenth of a second of its rate,
    spent locally for at most ``SLICE_SECONDS``. Keys with a low rate take one unit at a time, exactly. A slice
    is spent before it is used, so the quota is never exceeded; a slice a worker does not use in time is lost to
    the key until the bucket refills, a tenth of a second of its rate at most per worker.

    While the database is unreachable each worker keeps its own buckets, so requests go on and a key may get up
    to its quota per worker."""

    SLICE_SECONDS = 1.0

    def __init__(self, database: Database, clock: Callable[[], float] = time.time):
        self.database = database
        self.clock = clock
        self.fallback = MemoryQuotas(clock)
        self.warned_at = float("-inf")
        self.slices: dict[str, list[float]] = {}  # cell -> [units left, spend by (monotonic)]
        self.lock = threading.Lock()

    def take(self, cell: str, cost: float, rate: float, burst: float) -> float:
        with self.lock:
            held = self.slices.get(cell)
            if held is not None and held[0] >= cost and held[1] > time.monotonic():
                held[0] -= cost
                return 0.0
        size = max(cost, min(burst / 10, rate / 10))
        wait = self._take_or_fall_back(cell, size, rate, burst)
        if wait and size > cost:  # not a whole slice left: just this request's units, then
            size, wait = cost, self._take_or_fall_back(cell, cost, rate, burst)
        if not wait and size > cost:
            with self.lock:
                self.slices[cell] = [size - cost, time.monotonic() + self.SLICE_SECONDS]
        return wait

    def _take_or_fall_back(self, cell: str, cost: float, rate: float, burst: float) -> float:
        try:
            return self._take(cell, cost, rate, burst)
        except sa.exc.SQLAlchemyError as error:
            if time.monotonic() - self.warned_at > 60:
                self.warned_at = time.monotonic()
                log.error("API key quotas database unavailable, each worker counts on its own: %s", error)
            return self.fallback.take(cell, cost, rate, burst)

    def _take(self, cell: str, cost: float, rate: float, burst: float) -> float:
        if cost > burst:
            return float("inf")
        interval = 1.0 / rate
        cells = api_key_quotas.c
        for _ in range(3):
            now = self.clock()
            start = sa.case((cells.tat > now, cells.tat), else_=sa.literal(now))
            new_tat = start + cost * interval
            with self.database.connect() as connection:
                admitted = connection.execute(
                    api_key_quotas.update().where(cells.cell == cell, new_tat - now <= burst * interval + 1e-9)
                    .values(tat=new_tat).returning(cells.tat)).first()
                if admitted is not None:
                    return 0.0
                tat = connection.execute(sa.select(cells.tat).where(cells.cell == cell)).scalar()
                if tat is None:  # the key's first take: make its row, then take again
                    try:
                        connection.execute(api_key_quotas.insert().values(cell=cell, tat=0.0))
                    except sa.exc.IntegrityError:  # another worker made it first
                        pass
                    continue
            wait = admit(tat, now, cost, rate, burst)[1]
            if wait:
                return wait
        return 0.0  # it fitted by the time it was read, three times over: admitted
