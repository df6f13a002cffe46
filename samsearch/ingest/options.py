"""What an ingest run does (:class:`IngestOptions`, whose settings hash decides the segment ids) and the
names every ingest module shares: prompt modes, stages, payload keys."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from samsearch.identity import ModelRef
from samsearch.sam.accel import ExecutionOptions
from samsearch.sam.amg import AmgSettings
from samsearch.sam.pooling import RECIPE
from samsearch.sam.segment import PROMPT_MODES

PromptMode = Literal["auto", "boxes", "masks"]
SOURCE_OF_MODE = {"auto": "auto", "boxes": "box", "masks": "mask"}
SEGMENT_NAMESPACE = uuid.UUID("5b0e6a4e-3c1f-4f57-9a51-7d0c2f9b8e11")
DEFAULT_MAX_PIXELS = 200_000_000
# Per-stage timers of IngestSummary.stage_seconds ("transfer": masks and vectors to host memory).
STAGES: tuple[str, ...] = ("decode", "encode", "masks", "pooling", "transfer", "rle", "vectors", "sql")


@dataclass
class IngestOptions:
    dataset: str = "default"
    prompts: PromptMode = "auto"
    annotations: Path | None = None
    amg: AmgSettings = field(default_factory=AmgSettings)
    max_pixels: int = DEFAULT_MAX_PIXELS
    box_batch: int = 64
    # How to run (decoder, precision, batch sizes, pipeline): not part of the settings hash.
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)

    def settings_hash(self, model: ModelRef) -> str:
        """Everything that decides which segments and vectors an image yields (not the dataset name)."""
        ident: dict[str, Any] = {"model": model.key, "recipe": RECIPE, "prompts": self.prompts}
        if self.prompts == "auto":
            ident["amg"] = self.amg.identity()
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]



# Segment columns that hold labels/clusters, and the payload keys they are mirrored to in the vector store.
LABEL_PAYLOAD_KEYS = {"label": "label", "label_score": "label_score", "label_source": "label_source",
                      "label_bank": "bank", "cluster": "cluster"}



def segment_id(content_hash: str, settings_hash: str, index: int) -> str:
    return str(uuid.uuid5(SEGMENT_NAMESPACE, f"{content_hash}/{settings_hash}/{index}"))


__all__ = ["PROMPT_MODES", "IngestOptions", "PromptMode", "segment_id"]
