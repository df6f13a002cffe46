"""Metadata store: SQLAlchemy 2.0 typed ORM (``schema``), engine/session and migrations (``engine``), the
runs table through one path (``runs.recorded_run``) and bulk-write helpers (``bulk``). May import
``samsearch.errors`` and ``samsearch.identity`` only."""

from samsearch.db.engine import Database, default_sqlite_url, open_database
from samsearch.db.schema import (
    Bank,
    BankClass,
    BankVector,
    Base,
    ClusterName,
    ClusterRun,
    Image,
    ImageDataset,
    ImageStatus,
    Ingestion,
    Meta,
    Run,
    Segment,
    SegmentCluster,
    SpaceEmbedding,
)

__all__ = [
    "Bank", "BankClass", "BankVector", "Base", "ClusterName", "ClusterRun", "Database", "Image",
    "ImageDataset", "ImageStatus", "Ingestion", "Meta", "Run", "Segment", "SegmentCluster", "SpaceEmbedding",
    "default_sqlite_url", "open_database",
]
