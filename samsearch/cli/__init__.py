"""The ``samsearch`` command line: a thin layer over the library.

Every command calls one library function and turns ``SamsearchError`` into a one-line message on
stderr. Exit codes: 0 success; 1 an error (bad input, missing model, store failure); 2 bad usage;
3 the command finished but some inputs failed (listed in the summary and in ``samsearch stats``).
"""

from __future__ import annotations

from samsearch.cli import (  # noqa: F401  (registers commands)
    bank_cmd,
    cluster_cmd,
    db_cmd,
    demo_cmd,
    doctor_cmd,
    embed_cmd,
    eval_cmd,
    export_cmd,
    export_coco_cmd,
    ingest_cmd,
    label_cmd,
    queue_cmd,
    search_cmd,
    semantic_cmd,
    serve_cmd,
    stats_cmd,
    worker_cmd,
)
from samsearch.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
