"""The metadata schema. Alembic owns it (``migrations/``): change a model here, then add a migration.

Coordinates: boxes are stored as COCO XYWH in original-image pixels; masks as COCO compressed RLE
(``rle_counts`` + ``height``/``width``). Segment ids are UUID strings shared with the vector store.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    event,
    insert,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ImageStatus(str, enum.Enum):
    pending = "pending"  # enqueued, waiting for a worker
    running = "running"  # claimed; lease_expires_at says until when
    done = "done"
    failed = "failed"


class Meta(Base):
    """Home-wide facts, e.g. ``embedding_space``: which model/recipe produced the stored vectors."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)


class Run(Base):
    """One invocation of a batch job (ingest, bank build, label, cluster, ...) with its settings and counts."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Image(Base):
    """One distinct image file content (deduplicated by sha256), its processing status and queue lease."""

    __tablename__ = "images"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    # The first dataset the image joined (kept for compatibility); membership is ``image_datasets``.
    dataset: Mapped[str] = mapped_column(String(200), index=True, default="default")
    status: Mapped[str] = mapped_column(String(16), index=True, default=ImageStatus.pending.value)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    segments: Mapped[list[Segment]] = relationship(back_populates="image", passive_deletes=True)


class ImageDataset(Base):
    """Membership: the image belongs to the named dataset. A dataset is a named set of images, and the
    same file may belong to several; every filter by dataset reads this table (SQL) or the payload's
    ``dataset`` list, which mirrors it. A new image row joins its ``dataset`` (see the event below)."""

    __tablename__ = "image_datasets"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    dataset: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


@event.listens_for(Image, "after_insert")
def _join_first_dataset(_mapper, connection, target: Image) -> None:
    """An image created through the ORM belongs to its ``dataset`` (bulk inserts add the row themselves)."""
    connection.execute(insert(ImageDataset.__table__).values(image_id=target.id, dataset=target.dataset,
                                                             created_at=utcnow()))


class Ingestion(Base):
    """Marks that an image was fully segmented and stored with one settings hash (also for 0 segments)."""

    __tablename__ = "ingestions"
    __table_args__ = (UniqueConstraint("image_id", "settings_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    settings_hash: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    n_segments: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SpaceEmbedding(Base):
    """Marks that every stored segment of an image has its vector in the extra embedding space ``space``
    (written by ``samsearch embed`` after the vectors are durable: the exactly-once record of that job)."""

    __tablename__ = "space_embeddings"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    space: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    n_segments: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Segment(Base):
    __tablename__ = "segments"
    __table_args__ = (
        UniqueConstraint("image_id", "settings_hash", "segment_index"),
        Index("ix_segments_label_label_source", "label", "label_source"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    settings_hash: Mapped[str] = mapped_column(String(32), index=True)
    segment_index: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))  # auto | box | mask
    model_key: Mapped[str] = mapped_column(String(64))
    # mask as COCO compressed RLE over the original image
    rle_counts: Mapped[str] = mapped_column(Text)
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    bbox_x: Mapped[float] = mapped_column(Float)
    bbox_y: Mapped[float] = mapped_column(Float)
    bbox_w: Mapped[float] = mapped_column(Float)
    bbox_h: Mapped[float] = mapped_column(Float)
    area: Mapped[int] = mapped_column(Integer)
    predicted_iou: Mapped[float | None] = mapped_column(Float)
    stability_score: Mapped[float | None] = mapped_column(Float)
    prompt: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {"point": [x, y]} or {"box": [x0,y0,x1,y1]}
    # where an annotation file gave the segment (boxes/masks modes)
    annotation_id: Mapped[int | None] = mapped_column(BigInteger)
    annotation_category: Mapped[str | None] = mapped_column(String(200))
    # labels (memory bank, manual, or named cluster)
    label: Mapped[str | None] = mapped_column(String(200))
    label_score: Mapped[float | None] = mapped_column(Float)
    label_source: Mapped[str | None] = mapped_column(String(16))  # bank | manual | cluster
    label_bank: Mapped[str | None] = mapped_column(String(200))
    # current clustering
    cluster: Mapped[int | None] = mapped_column(Integer)
    cluster_run: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    image: Mapped[Image] = relationship(back_populates="segments")

    @property
    def rle(self) -> dict[str, Any]:
        return {"size": [self.height, self.width], "counts": self.rle_counts}

    @property
    def bbox_xywh(self) -> tuple[float, float, float, float]:
        return (self.bbox_x, self.bbox_y, self.bbox_w, self.bbox_h)


class Bank(Base):
    """A memory bank: per-class KMeans centroids of instance embeddings from a labeled dataset."""

    __tablename__ = "banks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    model_key: Mapped[str] = mapped_column(String(64))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    classes: Mapped[list[BankClass]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class BankClass(Base):
    __tablename__ = "bank_classes"
    __table_args__ = (UniqueConstraint("bank_id", "label"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bank_id: Mapped[int] = mapped_column(ForeignKey("banks.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(200))
    n_instances: Mapped[int] = mapped_column(Integer)
    n_centroids: Mapped[int] = mapped_column(Integer)


class BankVector(Base):
    """Instance embeddings (kind=instance, kept so a bank can be rebuilt with another K without SAM)
    and centroids (kind=centroid); float32 little-endian bytes."""

    __tablename__ = "bank_vectors"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bank_id: Mapped[int] = mapped_column(ForeignKey("banks.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # instance | centroid
    label: Mapped[str] = mapped_column(String(200))
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    point_id: Mapped[str | None] = mapped_column(String(36))  # centroid's id in the vector store
    source: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # image path, annotation id, ...


class ClusterRun(Base):
    __tablename__ = "cluster_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    algorithm: Mapped[str] = mapped_column(String(32))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    is_current: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SegmentCluster(Base):
    """Cluster id of a segment under one clustering run (-1 = noise)."""

    __tablename__ = "segment_clusters"
    run_id: Mapped[int] = mapped_column(ForeignKey("cluster_runs.id", ondelete="CASCADE"), primary_key=True)
    segment_id: Mapped[str] = mapped_column(ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True)
    cluster: Mapped[int] = mapped_column(Integer, index=True)
    distance: Mapped[float | None] = mapped_column(Float)  # to the cluster centre (typicality)


class ClusterName(Base):
    __tablename__ = "cluster_names"
    run_id: Mapped[int] = mapped_column(ForeignKey("cluster_runs.id", ondelete="CASCADE"), primary_key=True)
    cluster: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(200))
