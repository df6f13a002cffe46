"""One entry point for every extra space, whatever its family: load it by name, embed segments (masks of
decoded images), embed text (text-image spaces only). Callers (ingest, embed, bank, search) use these and
never pick the family's module themselves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samsearch.errors import InputError
from samsearch.spaces.registry import get_space


def load_space(name: str, weights: Path | None = None, device: str | None = None,
               cache_dir: Path | None = None, offline: bool | None = None) -> Any:
    """A loaded space (``.spec``, ``.space`` identity, ``.model``, ``.device``); see the family modules."""
    if get_space(name).family == "clip":
        from samsearch.spaces import clip

        return clip.load_space(name, weights, device, cache_dir, offline)
    from samsearch.spaces import dinov2

    return dinov2.load_space(name, weights, device, cache_dir, offline)


def embed_images(sm: Any, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | torch.Tensor],
                 batch_size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Images and their (N_i, H, W) bool masks → per image ((N_i, dim) vectors, (N_i,) valid). DINOv2: one
    backbone pass per image (``batch_size`` images at a time), masks pooled over its patch tokens; CLIP:
    every mask's crop through the image tower, crops batched across the images."""
    if sm.spec.family == "clip":
        from samsearch.spaces import clip

        return clip.embed_images(sm, images, masks)
    from samsearch.spaces import dinov2

    tokens = dinov2.encode_images(sm, images, batch_size=max(1, batch_size))
    return [dinov2.pool_segments(tok, m) for tok, m in zip(tokens, masks, strict=True)]


def embed_segments(sm: Any, rgb: np.ndarray, masks: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One image and its segments' masks → ((N, dim) vectors in ``sm.space``, (N,) valid)."""
    return embed_images(sm, [rgb], [masks], batch_size=1)[0]


def embed_texts(sm: Any, texts: Sequence[str]) -> torch.Tensor:
    """Texts → (N, dim) unit vectors in a text-image space; InputError for a space without a text tower."""
    if not sm.spec.text:
        raise InputError(f"space {sm.spec.name!r} has no text tower; text queries need a text-image space "
                         "(e.g. clip-b32)")
    from samsearch.spaces import clip

    return clip.embed_texts(sm, texts)
