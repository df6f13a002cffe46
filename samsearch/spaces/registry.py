"""The named embedding spaces a segment can be embedded in, besides ``sam`` (which lives in samsearch.sam).

A space's name is stable (it will be stored in homes); its :class:`EmbeddingSpace` identity records the
model, the weights hash (sha256 of the weights file; ``seed…`` for tiny-random), the recipe (pooling
and input resolution) and the dimension. Two vectors may be compared only when their identities are equal.
"""

from __future__ import annotations

from dataclasses import dataclass

from samsearch.errors import InputError, SamsearchError
from samsearch.identity import EmbeddingSpace

POOL_RECIPE = "maskpool-v1"  # the same coverage-weighted mask pooling as SAM's vectors
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_RANDOM_SEED = 0
TINY_RANDOM_SHA = f"seed{TINY_RANDOM_SEED:016d}"  # what identifies tiny-random's weights


class SpaceError(SamsearchError):
    """An embedding space cannot be loaded (unknown name, weights missing offline, wrong weights)."""


@dataclass(frozen=True)
class SpaceSpec:
    name: str
    family: str  # "dinov2"
    dim: int  # width of the pooled vector (the backbone's hidden size)
    resolution: int  # input side: the image's longest side is resized to this, then padded to a square
    patch: int = 14
    hf_repo: str | None = None  # official weights on the Hugging Face hub; None for tiny-random
    # The hub revision downloaded. "main" until a session with hub access pins each commit (the weights'
    # sha256 recorded in the identity is what tells vectors apart either way).
    revision: str = "main"
    # tiny-random's architecture (ignored for official weights, whose config.json says it)
    layers: int = 0
    heads: int = 0

    @property
    def grid(self) -> int:
        return self.resolution // self.patch

    @property
    def recipe(self) -> str:
        """Pooling recipe + input resolution: vectors at another resolution are another space."""
        return f"{POOL_RECIPE}@{self.resolution}"

    @property
    def tiny_random(self) -> bool:
        return self.hf_repo is None

    def identity(self, weights_sha256: str) -> EmbeddingSpace:
        return EmbeddingSpace(self.name, weights_sha256, self.recipe, self.dim)


# 448 = 32 patches of 14: twice DINOv2's 224 training side, so a small object still covers a few patches.
SPACES: dict[str, SpaceSpec] = {
    s.name: s
    for s in (
        SpaceSpec("dinov2-s", "dinov2", 384, 448, hf_repo="facebook/dinov2-small"),
        SpaceSpec("dinov2-b", "dinov2", 768, 448, hf_repo="facebook/dinov2-base"),
        SpaceSpec("dinov2-l", "dinov2", 1024, 448, hf_repo="facebook/dinov2-large"),
        SpaceSpec("dinov2-g", "dinov2", 1536, 448, hf_repo="facebook/dinov2-giant"),
        # Real Dinov2 architecture (transformers' Dinov2Model), small, seeded random weights: for tests.
        SpaceSpec("dinov2-tiny-random", "dinov2", 64, 224, layers=2, heads=2),
    )
}


def get_space(name: str) -> SpaceSpec:
    if name not in SPACES:
        raise InputError(f"unknown embedding space {name!r}; choose one of: {', '.join(SPACES)}")
    return SPACES[name]


def tiny_random_identity(name: str) -> EmbeddingSpace:
    """A tiny-random space's identity, known without building it."""
    spec = get_space(name)
    if not spec.tiny_random:
        raise InputError(f"{name} has official weights; its identity is known once they are loaded")
    return spec.identity(TINY_RANDOM_SHA)
