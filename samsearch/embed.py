"""Segment embedding: the average of SAM image-encoder features inside the mask (the seeds' recipe).

The mask goes through the same transform as the image (resize longest side to 1024, pad bottom/right
to 1024×1024), then each 16×16 patch of the 64×64 feature grid is weighted by the fraction of it the
mask covers. The weighted mean is L2-normalised, so cosine similarity is a dot product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from samsearch.encoder import EncodedImage

# Bump when the pooling changes: vectors from different recipes must never be mixed in one home.
RECIPE = "maskpool-v1"


def mask_patch_weights(masks: torch.Tensor, enc: EncodedImage, grid: int = 64) -> torch.Tensor:
    """(N, H, W) bool masks in original-image pixels → (N, grid*grid) patch coverage fractions."""
    n = masks.shape[0]
    h, w = enc.input_size
    side = grid * 16
    # Bound memory on big images: resize a few masks at a time.
    per_chunk = max(1, int(6e7 // max(1, masks.shape[1] * masks.shape[2])))
    out = torch.empty((n, grid * grid), dtype=torch.float32, device=masks.device)
    for start in range(0, n, per_chunk):
        chunk = masks[start:start + per_chunk, None].to(torch.float32)
        resized = F.interpolate(chunk, size=(h, w), mode="area")  # coverage-preserving resize
        padded = F.pad(resized, (0, side - w, 0, side - h))
        cover = F.avg_pool2d(padded, kernel_size=side // grid)
        out[start:start + per_chunk] = cover.flatten(1)
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
