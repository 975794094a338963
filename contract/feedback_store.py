"""Labeled feedback and retained predictions: rows in SQLite or PostgreSQL, images content-addressed on disk.

Rows go through SQLAlchemy Core, so one schema and one set of queries serve both databases. SQLite (the default,
a file beside the images) runs in WAL mode with a busy timeout, so every gunicorn worker can write at once;
``DATABASE_URL`` points several replicas at one PostgreSQL server instead (they then need a shared images
folder). An image is the model's normalized input, saved once as a lossless PNG named by its id: the SHA-256 of
the normalized pixels, which is also the prediction id every response carries.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from PIL import Image

DATABASE_FILE = "feedback.db"
IMAGES_FOLDER = "images"

metadata = sa.MetaData()
feedback = sa.Table(
    "feedback", metadata,
    sa.Column("row", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("image_id", sa.String(64), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("model_version", sa.Integer),
    sa.Column("predicted_label", sa.String(256)),
    sa.Column("true_label", sa.String(256), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),  # seconds since the epoch, UTC
    sa.Column("image_file", sa.String(256), nullable=False),  # relative to the images folder
    sa.UniqueConstraint("model", "image_id", "true_label", name="one_label_per_image"),
)
# One row per model, updated at the start of every feedback insert: the update holds the row's lock in PostgreSQL
# and the database's write lock in SQLite until the transaction ends, so the count that the cap compares with
# cannot change between the count and the insert.
feedback_locks = sa.Table(
    "feedback_locks", metadata,
    sa.Column("model", sa.String(128), primary_key=True),
)
retained = sa.Table(
    "retained_predictions", metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("image_id", sa.String(64), primary_key=True),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("predicted_label", sa.String(256), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    sa.Column("image_file", sa.String(256), nullable=False),
    sa.Column("size_bytes", sa.Integer, nullable=False),
    # What ranks it in the labeling queue (added later: databases made before them gain them on first use).
    sa.Column("set_labels", sa.Text),  # JSON list: the prediction set at QUEUE_COVERAGE, per class
    sa.Column("set_size", sa.Integer),
    sa.Column("ood_score", sa.Float),
    sa.Column("ood_p_value", sa.Float),
)


def encode_pixels(pixels: np.ndarray) -> bytes:
    """The normalized input as a lossless 8-bit PNG (exact for decoded images, whose pixels are n/255)."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_pixels(data: bytes) -> np.ndarray:
    """uint8 pixels of a stored image, as training takes them."""
    return np.asarray(Image.open(io.BytesIO(data)))


@dataclass(frozen=True)
class FeedbackItem:
    image_id: str
    model: str
    model_version: int | None
    predicted_label: str | None
    true_label: str
    created_at: float
    image_file: str


@dataclass(frozen=True)
class RetainedPrediction:
    image_id: str
    model: str
    model_version: int
    predicted_label: str
    created_at: float
    image_file: str


@dataclass(frozen=True)
class QueuedImage:
    """A retained input waiting for a label, with what ranks it: its set and how unusual it is."""

    image_id: str
    model_version: int
    predicted_label: str
    created_at: float
    image_file: str
    set_labels: list[str] | None
    ood_score: float | None
    ood_p_value: float | None

    @property
    def unsure(self) -> bool | None:
        return None if self.set_labels is None else len(self.set_labels) > 1


@dataclass(frozen=True)
class Ranking:
    """What a retained input is ranked by in the labeling queue (None where the version has no such record)."""

    set_labels: list[str] | None = None
    ood_score: float | None = None
    ood_p_value: float | None = None


class FeedbackStore:
    """The database and the images folder; safe to share between threads, one per process."""

    def __init__(self, folder: Path, database_url: str | None = None):
        self.folder = Path(folder)
        self.images = self.folder / IMAGES_FOLDER
        self.images.mkdir(parents=True, exist_ok=True)
        url = database_url or f"sqlite:///{(self.folder / DATABASE_FILE).resolve()}"
        self.engine = make_engine(url)
        self._tables_ready = False
        self._tables_lock = threading.Lock()

    def _ensure_tables(self) -> None:
        """Create the tables on first use, not at start-up: a database that is down then does not stop a worker
        from serving predictions. Workers starting together may race to create them; the loser retries."""
        if self._tables_ready:
            return
        with self._tables_lock:
            for attempt in range(5):
                try:
                    metadata.create_all(self.engine)
                    self._add_missing_columns()
                    break
                except sa.exc.DBAPIError:
                    if attempt == 4:
                        raise
                    time.sleep(0.05 * (attempt + 1))
            self._tables_ready = True

    def _add_missing_columns(self) -> None:
        """Columns added to a table after databases were made with it, added to those databases (nullable)."""
        for table in (retained,):
            present = {column["name"] for column in sa.inspect(self.engine).get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=self.engine.dialect)
                    with self.engine.begin() as connection:
                        connection.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))

    def _begin(self):
        self._ensure_tables()
        return self.engine.begin()

    def _connect(self):
        self._ensure_tables()
        return self.engine.connect()

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # --- images -----------------------------------------------------------------------------------------

    def save_image(self, image_id: str, pixels: np.ndarray) -> tuple[str, int]:
        """Write the image under its id unless it is there already; (relative path, size in bytes)."""
        relative = f"{image_id[:2]}/{image_id}.png"
        path = self.images / relative
        if path.exists():
            return relative, path.stat().st_size
        data = encode_pixels(pixels)
        path.parent.mkdir(exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_bytes(data)
        os.replace(partial, path)  # readers see the whole file or none
        return relative, len(data)

    def read_image(self, relative: str) -> np.ndarray:
        return decode_pixels((self.images / relative).read_bytes())

    # --- feedback ---------------------------------------------------------------------------------------

    def add_feedback(self, image_id: str, pixels: np.ndarray, model: str, model_version: int | None,
                     predicted_label: str | None, true_label: str, max_items: int | None = None) -> str:
        """Store one labeled image: "stored"; "duplicate" when this image already has this label (stored once);
        "full" when the model already has ``max_items``, decided atomically whatever other writers do."""
        with self._begin() as connection:
            _lock_model(connection, model)
            if max_items is not None and connection.execute(
                    sa.select(sa.func.count()).select_from(feedback).where(feedback.c.model == model)
            ).scalar_one() >= max_items:
                return "full"
            relative, _ = self.save_image(image_id, pixels)
            try:
                with connection.begin_nested():
                    connection.execute(feedback.insert().values(
                        image_id=image_id, model=model, model_version=model_version,
                        predicted_label=predicted_label, true_label=true_label, created_at=time.time(),
                        image_file=relative))
            except sa.exc.IntegrityError:
                return "duplicate"
        return "stored"

    def feedback_count(self, model: str) -> int:
        with self._connect() as connection:
            return connection.execute(sa.select(sa.func.count()).select_from(feedback)
                                      .where(feedback.c.model == model)).scalar_one()

    def feedback_items(self, model: str, limit: int | None = None) -> list[FeedbackItem]:
        """The model's feedback, newest first (``limit`` keeps the newest)."""
        query = (sa.select(feedback.c.image_id, feedback.c.model, feedback.c.model_version,
                           feedback.c.predicted_label, feedback.c.true_label, feedback.c.created_at,
                           feedback.c.image_file)
                 .where(feedback.c.model == model).order_by(feedback.c.created_at.desc(), feedback.c.row.desc()))
        if limit is not None:
            query = query.limit(limit)
        with self._connect() as connection:
            return [FeedbackItem(*row) for row in connection.execute(query)]

    def stats(self, model: str) -> dict:
        """Counts per true label and how often the served prediction agreed: production accuracy."""
        agreed = sa.func.sum(sa.case((feedback.c.predicted_label == feedback.c.true_label, 1), else_=0))
        query = (sa.select(feedback.c.true_label, sa.func.count(), agreed)
                 .where(feedback.c.model == model).group_by(feedback.c.true_label))
        with self._connect() as connection:
            rows = connection.execute(query).all()
        total = sum(count for _, count, _ in rows)
        agreeing = sum(int(agree or 0) for _, _, agree in rows)
        return {
            "model": model,
            "items": total,
            "agreement": agreeing / total if total else None,
            "per_label": {label: {"items": count, "agreement": int(agree or 0) / count}
                          for label, count, agree in sorted(rows)},
        }

    def delete_feedback(self, model: str, image_id: str) -> int:
        """Forget every label of one image (and the image, unless a retained prediction still uses it)."""
        with self._begin() as connection:
            deleted = connection.execute(feedback.delete().where(
                (feedback.c.model == model) & (feedback.c.image_id == image_id))).rowcount
        self._remove_unreferenced(image_id)
        return deleted

    # --- retained predictions -----------------------------------------------------------------------------

    def retain(self, image_id: str, pixels: np.ndarray, model: str, model_version: int,
               predicted_label: str, ranking: Ranking = Ranking()) -> None:
        """Keep a served input for later feedback by id; a repeat refreshes its time."""
        relative, size = self.save_image(image_id, pixels)
        now = time.time()
        ranked = {"set_labels": None if ranking.set_labels is None else json.dumps(ranking.set_labels),
                  "set_size": None if ranking.set_labels is None else len(ranking.set_labels),
                  "ood_score": ranking.ood_score, "ood_p_value": ranking.ood_p_value}
        with self._begin() as connection:
            updated = connection.execute(retained.update().where(
                (retained.c.model == model) & (retained.c.image_id == image_id)).values(
                created_at=now, model_version=model_version, predicted_label=predicted_label, **ranked)).rowcount
            if not updated:
                try:
                    with connection.begin_nested():
                        connection.execute(retained.insert().values(
                            model=model, image_id=image_id, model_version=model_version,
                            predicted_label=predicted_label, created_at=now, image_file=relative, size_bytes=size,
                            **ranked))
                except sa.exc.IntegrityError:
                    pass  # another worker retained the same image at the same moment

    def find_retained(self, model: str, image_id: str, max_age_seconds: float) -> RetainedPrediction | None:
        query = sa.select(retained.c.image_id, retained.c.model, retained.c.model_version,
                          retained.c.predicted_label, retained.c.created_at, retained.c.image_file).where(
            (retained.c.model == model) & (retained.c.image_id == image_id)
            & (retained.c.created_at >= time.time() - max_age_seconds))
        with self._connect() as connection:
            row = connection.execute(query).first()
        return RetainedPrediction(*row) if row else None

    def labeling_queue(self, model: str, limit: int, max_age_seconds: float) -> list[QueuedImage]:
        """Retained inputs of ``model`` with no label yet, those a label would help most first: unsure ones (a
        set of more than one label), then the most unlike the training data, then the newest."""
        labeled = sa.select(feedback.c.image_id).where(
            (feedback.c.model == model) & (feedback.c.image_id == retained.c.image_id))
        query = sa.select(retained.c.image_id, retained.c.model_version, retained.c.predicted_label,
                          retained.c.created_at, retained.c.image_file, retained.c.set_labels,
                          retained.c.ood_score, retained.c.ood_p_value).where(
            (retained.c.model == model) & (retained.c.created_at >= time.time() - max_age_seconds)
            & ~sa.exists(labeled)).order_by(
            sa.case((retained.c.set_size > 1, 0), else_=1),
            sa.case((retained.c.ood_score.is_(None), 1), else_=0), retained.c.ood_score.desc(),
            retained.c.created_at.desc(), retained.c.image_id).limit(limit)
        with self._connect() as connection:
            rows = connection.execute(query).all()
        return [QueuedImage(row.image_id, row.model_version, row.predicted_label, row.created_at, row.image_file,
                            None if row.set_labels is None else json.loads(row.set_labels), row.ood_score,
                            row.ood_p_value) for row in rows]

    def prune_retained(self, max_age_seconds: float, max_bytes: int) -> int:
        """Forget retained predictions older than the age limit, then the oldest beyond the size limit."""
        removed: list[str] = []
        with self._begin() as connection:
            cutoff = time.time() - max_age_seconds
            removed += connection.execute(sa.select(retained.c.image_id).where(retained.c.created_at < cutoff)
                                          ).scalars().all()
            connection.execute(retained.delete().where(retained.c.created_at < cutoff))
            rows = connection.execute(sa.select(retained.c.model, retained.c.image_id, retained.c.size_bytes)
                                      .order_by(retained.c.created_at.desc())).all()
            total, over = 0, []
            for model, image_id, size in rows:
                total += size
                if total > max_bytes:
                    over.append((model, image_id))
            for model, image_id in over:
                connection.execute(retained.delete().where(
                    (retained.c.model == model) & (retained.c.image_id == image_id)))
            removed += [image_id for _, image_id in over]
        for image_id in set(removed):
            self._remove_unreferenced(image_id)
        return len(removed)

    def retained_summary(self) -> dict:
        with self._connect() as connection:
            count, size = connection.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(retained.c.size_bytes), 0))).one()
        return {"items": count, "bytes": int(size)}

    def _remove_unreferenced(self, image_id: str) -> None:
        with self._connect() as connection:
            used = connection.execute(sa.select(sa.func.count()).select_from(feedback)
                                      .where(feedback.c.image_id == image_id)).scalar_one()
            used += connection.execute(sa.select(sa.func.count()).select_from(retained)
                                       .where(retained.c.image_id == image_id)).scalar_one()
        if not used:
            (self.images / f"{image_id[:2]}/{image_id}.png").unlink(missing_ok=True)

    def close(self) -> None:
        self.engine.dispose()


def _lock_model(connection: sa.Connection, model: str) -> None:
    """Hold the model's feedback lock until the transaction ends (``feedback_locks``)."""
    lock = feedback_locks.update().where(feedback_locks.c.model == model).values(model=model)
    if connection.execute(lock).rowcount:
        return
    try:
        with connection.begin_nested():
            connection.execute(feedback_locks.insert().values(model=model))
    except sa.exc.IntegrityError:  # another writer created it first: wait for its lock like any other
        connection.execute(lock)


def make_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite files get WAL (readers never block the writer) and wait for locks."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record):
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]  # psycopg 3, not the default psycopg2
    return sa.create_engine(url, pool_pre_ping=True)
