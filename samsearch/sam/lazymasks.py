"""Full-resolution masks made a slice at a time (:class:`LazyMasks`): how an image with many large masks
is held without all of them at full resolution at once (issue 12: an 8000×6000 image's masks took
~48 MB each as bool, several times that in copies)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

# Mask stacks with more elements than this (N·H·W; 256 MiB of bool) are made a slice at a time when read
# (LazyMasks) instead of being held at full resolution all at once.
MASK_BUDGET = 1 << 28


class LazyMasks:
    """(N, H, W) bool masks made on demand, a slice at a time: what an image with many masks at full
    resolution holds instead of the whole stack. Enough of a tensor for the pooling and the writer, which
    read masks in slices (``masks[a:b]`` is a (b-a, H, W) bool tensor); ``numpy()`` makes all of them."""

    dtype = torch.bool
    ndim = 3

    def __init__(self, n: int, h: int, w: int, device: torch.device | str,
                 make: Callable[[int, int], torch.Tensor]):
        self.shape = torch.Size((n, h, w))
        self.device = torch.device(device)
        self._make = make

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, index: int | slice) -> torch.Tensor:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise IndexError("LazyMasks slices take step 1")
            return self._make(start, max(start, stop)).to(self.device)
        i = range(len(self))[index]
        return self._make(i, i + 1).to(self.device)[0]

    def to(self, device: torch.device | str) -> LazyMasks:
        return self if torch.device(device) == self.device else LazyMasks(*self.shape, device, self._make)

    def cpu(self) -> LazyMasks:
        return self.to("cpu")

    def bool(self) -> LazyMasks:
        return self

    def numpy(self) -> np.ndarray:
        """Every mask at once (N·H·W bytes)."""
        return self[:].cpu().numpy()


def masks_of(n: int, h: int, w: int, device: torch.device | str, make: Callable[[int, int], torch.Tensor],
             lazy: bool = True) -> torch.Tensor | LazyMasks:
    """``make(0, n)`` when the stack fits :data:`MASK_BUDGET` elements (or ``lazy`` is False), else a
    :class:`LazyMasks` over ``make``."""
    if not lazy or n * h * w <= MASK_BUDGET:
        masks = make(0, n)
        return masks if masks.device == torch.device(device) else masks.to(device)
    return LazyMasks(n, h, w, device, make)
