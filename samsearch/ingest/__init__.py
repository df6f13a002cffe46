"""Ingest: image files → SAM segments → one embedding each → vectors + metadata. options (what a run
does and its settings hash), containers (what flows between stages), claim (image rows as units of work),
store (the writer: vectors first, then one SQL transaction per image), ingestor (the stages in sequence and
the run), pipeline (the same stages overlapped in threads).

May import: ``samsearch.sam``, ``samsearch.data``, the stores (db, vectors, home) and the root modules.
"""

from samsearch.ingest.containers import IngestSummary
from samsearch.ingest.ingestor import Ingestor, ingest
from samsearch.ingest.options import IngestOptions

__all__ = ["IngestOptions", "IngestSummary", "Ingestor", "ingest"]
