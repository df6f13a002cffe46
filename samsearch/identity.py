"""What produced a vector, as plain values: the model's weights (:class:`ModelRef`) and the embedding
space a home's vectors live in (:class:`EmbeddingSpace`).

These are the only places a model key (``name:sha[:16]``) is built. They import nothing heavy, so the
stores, the queue and the reports can name a model without loading torch or the network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

KEY_HASH_CHARS = 16  # weight-hash prefix in a model key (payloads, segment rows, banks)
SHORT_HASH_CHARS = 12  # weight-hash prefix in messages


@dataclass(frozen=True)
class ModelRef:
    """A model's weights: its registry name and the sha256 of its checkpoint ("seed…" for tiny-random)."""

    name: str
    checkpoint_sha256: str

    @property
    def key(self) -> str:
        """Model name + weight-hash prefix: short enough for a payload, unique enough to tell weights apart."""
        return f"{self.name}:{self.checkpoint_sha256[:KEY_HASH_CHARS]}"


@dataclass(frozen=True)
class EmbeddingSpace:
    """What produced the vectors of a home; two spaces must be equal for their vectors to be compared."""

    model: str
    checkpoint_sha256: str
    recipe: str
    dim: int

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.model, self.checkpoint_sha256)

    @property
    def model_key(self) -> str:
        return self.ref.key

    def describe(self) -> str:
        return f"{self.model} (weights {self.checkpoint_sha256[:SHORT_HASH_CHARS]}, {self.recipe}, {self.dim}-d)"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(value: dict[str, Any]) -> EmbeddingSpace:
        return EmbeddingSpace(**value)
