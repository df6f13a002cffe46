"""Parity measures between two sets of masks or embeddings (the fast paths against the reference ones)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MaskParity:
    n_reference: int
    n_ours: int
    best_iou: np.ndarray  # (n_reference,) best IoU of each reference mask among ours

    def matched(self, iou: float = 0.9) -> float:
        """Fraction of reference masks with a counterpart at IoU ≥ ``iou`` (1.0 when there are none)."""
        return float((self.best_iou >= iou).mean()) if self.n_reference else 1.0

    def count_ratio(self) -> float:
        """|n_ours − n_reference| / n_reference (0.0 when both are empty)."""
        if self.n_reference == 0:
            return 0.0 if self.n_ours == 0 else float("inf")
        return abs(self.n_ours - self.n_reference) / self.n_reference

    def ok(self, matched: float = 0.95, iou: float = 0.9, counts: float = 0.05) -> bool:
        """The project's parity bar: ≥ 95 % of reference masks matched at IoU ≥ 0.9, counts within 5 %."""
        return self.matched(iou) >= matched and self.count_ratio() <= counts

    def as_dict(self) -> dict[str, float | int]:
        return {"n_reference": self.n_reference, "n_ours": self.n_ours, "matched_iou_0.9": self.matched(),
                "mean_best_iou": float(self.best_iou.mean()) if self.n_reference else 1.0,
                "count_ratio": self.count_ratio()}


def mask_parity(reference: np.ndarray | torch.Tensor, ours: np.ndarray | torch.Tensor) -> MaskParity:
    """Match (N, H, W) reference masks to (M, H, W) masks by IoU (one matrix product)."""
    ref, out = torch.as_tensor(reference), torch.as_tensor(ours)
    n, m = int(ref.shape[0]), int(out.shape[0])
    if n == 0 or m == 0:
        return MaskParity(n, m, np.zeros(n))
    a = ref.reshape(n, -1).to(torch.float32).cpu()
    b = out.reshape(m, -1).to(torch.float32).cpu()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
    return MaskParity(n, m, iou.max(dim=1).values.numpy())


def embedding_cosine(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, C) arrays."""
    x = torch.as_tensor(a).to(torch.float64).cpu()
    y = torch.as_tensor(b).to(torch.float64).cpu()
    return torch.nn.functional.cosine_similarity(x, y, dim=1).numpy()
