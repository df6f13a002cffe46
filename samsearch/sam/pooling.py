"""Segment embedding: the average of SAM image-encoder features inside the mask (the seeds' recipe).

The mask goes through the same transform as the image (resize longest side to 1024, pad bottom/right
to 1024×1024), then each 16×16 patch of the 64×64 feature grid is weighted by the fraction of it the
mask covers. The weighted mean is L2-normalised, so cosine similarity is a dot product.

The coverage is computed without resizing any mask: the area resize (an average over a window of source
rows and columns per output pixel), the padding and the 16×16 patch average are all linear and
separable, so the (64, 64) coverage of an H×W mask is ``C_y · mask · C_xᵀ`` with a (64, H) and a (W, 64)
matrix built once per image size (``coverage_matrix``), i.e. two matrix products per mask, on the
mask's device. It equals the area-resize definition up to float rounding (a test compares them).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from samsearch.identity import EmbeddingSpace, ModelRef
from samsearch.sam.encoder import EncodedImage

# Bump when the pooling changes: vectors from different recipes must never be mixed in one home.
RECIPE = "maskpool-v1"
EMBEDDING_DIM = 256  # SAM's prompt/neck width, the same for every SAM model


def embedding_space(model: ModelRef) -> EmbeddingSpace:
    """The space a SAM model's mask-pooled vectors live in (known without loading the network)."""
    return EmbeddingSpace(model.name, model.checkpoint_sha256, RECIPE, EMBEDDING_DIM)


@lru_cache(maxsize=64)
def _coverage_matrix_np(size: int, resized: int, grid: int, patch: int) -> np.ndarray:
    """(grid, size) float64: row g = weight of each source pixel in patch g along one axis: the source is
    area-resized to ``resized`` samples (sample i averages source [⌊i·size/resized⌋, ⌈(i+1)·size/resized⌉),
    integer bounds as PyTorch's adaptive average pooling computes them), zero-padded to grid·patch, and
    averaged over blocks of ``patch`` samples."""
    i = np.arange(resized, dtype=np.int64)
    start = (i * size) // resized
    end = -((-(i + 1) * size) // resized)
    lengths = end - start
    rows = np.repeat(i // patch, lengths)  # output patch of each (sample, source pixel) pair
    cols = np.repeat(start, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths,
                                                                             lengths))
    out = np.zeros((grid, size), dtype=np.float64)
    np.add.at(out, (rows, cols), np.repeat(1.0 / (patch * lengths), lengths))
    return out


def coverage_matrix(size: int, resized: int, grid: int = 64, patch: int = 16, device=None) -> torch.Tensor:
    return torch.as_tensor(_coverage_matrix_np(size, resized, grid, patch), dtype=torch.float32, device=device)


def mask_patch_weights(masks: torch.Tensor, enc: EncodedImage, grid: int = 64) -> torch.Tensor:
    """(N, H, W) bool masks in original-image pixels → (N, grid*grid) patch coverage fractions."""
    return mask_coverage(masks, enc.input_size, grid, 16)


def mask_coverage(masks: torch.Tensor, input_size: tuple[int, int], grid: int, patch: int) -> torch.Tensor:
    """(N, H, W) bool masks → (N, grid*grid) coverage fractions for any backbone whose input is the image
    resized to ``input_size`` (h, w), padded bottom/right to grid·patch square, cut into patch×patch tiles."""
    n, h, w = masks.shape
    c_y = coverage_matrix(h, input_size[0], grid, patch, masks.device)  # (g, H)
    c_x_t = coverage_matrix(w, input_size[1], grid, patch, masks.device).T.contiguous()  # (W, g)
    out = torch.empty((n, grid * grid), dtype=torch.float32, device=masks.device)
    per_chunk = max(1, int(3e7 // max(1, h * w)))  # bound the float copy of the masks
    for start in range(0, n, per_chunk):
        chunk = masks[start:start + per_chunk].to(torch.float32)
        out[start:start + per_chunk] = (c_y @ chunk @ c_x_t).flatten(1)
    return out


@torch.no_grad()
def pool_mask_embeddings(masks: torch.Tensor, enc: EncodedImage) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (N, C) float32, L2-normalised, and a (N,) bool ``valid`` (False for empty masks,
    whose row is zero)."""
    feats = enc.features[0]  # (C, g, g)
    c, g, _ = feats.shape
    if masks.shape[0] == 0:
        return torch.zeros((0, c), device=feats.device), torch.zeros(0, dtype=torch.bool, device=feats.device)
    weights = mask_patch_weights(masks.to(feats.device), enc, grid=g)
    total = weights.sum(dim=1, keepdim=True)
    valid = total[:, 0] > 0
    pooled = (weights @ feats.reshape(c, g * g).T.float()) / total.clamp_min(1e-12)
    pooled = F.normalize(pooled, dim=1)
    pooled[~valid] = 0
    return pooled, valid
