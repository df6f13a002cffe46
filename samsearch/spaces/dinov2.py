"""DINOv2 spaces: load the backbone (transformers' ``Dinov2Model``), encode images once, and pool the patch
tokens inside each segment's mask.

Input frame: like SAM's, the image's longest side is resized to the space's ``resolution`` (PIL bilinear, through
segment-anything's ``ResizeLongestSide``), normalised with ImageNet mean/std and zero-padded bottom/right
to a ``resolution``² square, so a mask maps onto the (grid × grid) patch tokens with the very coverage
matrices SAM's ``maskpool-v1`` uses (:func:`samsearch.sam.pooling.mask_coverage`), only with DINOv2's
14-pixel patches. The pooled vector is the coverage-weighted mean of the final (layer-normed) patch
tokens, L2-normalised; empty masks get a zero row and ``valid = False``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide
from transformers import Dinov2Config, Dinov2Model
from transformers.utils import logging as hf_logging

from samsearch.errors import one_line
from samsearch.identity import EmbeddingSpace
from samsearch.sam.lazymasks import LazyMasks
from samsearch.sam.models import default_cache_dir, select_device, sha256_file
from samsearch.sam.pooling import mask_coverage
from samsearch.spaces.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TINY_RANDOM_SEED,
    TINY_RANDOM_SHA,
    SpaceError,
    SpaceSpec,
    get_space,
)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class SpaceModel:
    spec: SpaceSpec
    space: EmbeddingSpace  # identity of the vectors this model produces
    model: Dinov2Model
    device: torch.device


@dataclass
class PatchTokens:
    """One image's backbone output: what every mask of that image is pooled from."""

    tokens: torch.Tensor  # (grid*grid, C) float32, row-major over the padded square
    original_size: tuple[int, int]  # (H, W) as given
    input_size: tuple[int, int]  # (h, w) after resize-longest-side, before padding
    grid: int
    patch: int


def tiny_random_config(spec: SpaceSpec) -> Dinov2Config:
    return Dinov2Config(hidden_size=spec.dim, num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                        intermediate_size=spec.dim * 4, patch_size=spec.patch, image_size=spec.resolution)


def build_tiny_random(spec: SpaceSpec, seed: int = TINY_RANDOM_SEED) -> Dinov2Model:
    """Deterministic: the same seed gives the same weights (the global RNG state is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Dinov2Model(tiny_random_config(spec)).eval()


def _offline_default() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _weights_sha(path: Path) -> str:
    """The hub cache names each downloaded file's blob by its sha256: reuse it instead of re-hashing GBs."""
    blob = Path(os.path.realpath(path)).name
    return blob if re.fullmatch(r"[0-9a-f]{64}", blob) else sha256_file(path)


def _official_dir(spec: SpaceSpec, cache_dir: Path | None, offline: bool) -> tuple[Path, str]:
    from huggingface_hub import hf_hub_download

    assert spec.hf_repo is not None
    cache = str(cache_dir if cache_dir is not None else default_cache_dir() / "huggingface")
    where = f"{spec.hf_repo}@{spec.revision}"
    try:
        hf_hub_download(spec.hf_repo, "config.json", revision=spec.revision, cache_dir=cache,
                        local_files_only=offline)
        weights = Path(hf_hub_download(spec.hf_repo, WEIGHT_FILES[0], revision=spec.revision,
                                       cache_dir=cache, local_files_only=offline))
    except Exception as exc:  # network, offline mode, missing repo/revision: all end the same way
        how = "not cached and offline" if offline else f"download failed ({type(exc).__name__})"
        raise SpaceError(f"{spec.name}: weights {where} are {how}; pass --weights DIR with a local copy "
                         f"(config.json + {WEIGHT_FILES[0]}) or use dinov2-tiny-random") from exc
    return weights.parent, _weights_sha(weights)


def _local_dir(spec: SpaceSpec, weights: Path) -> tuple[Path, str]:
    weights = Path(weights).expanduser()
    found = [weights / f for f in WEIGHT_FILES if (weights / f).is_file()]
    if not (weights / "config.json").is_file() or not found:
        raise SpaceError(f"{spec.name}: --weights {weights} must be a directory holding config.json and "
                         f"{' or '.join(WEIGHT_FILES)}")
    return weights, sha256_file(found[0])


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No per-tensor "Loading weights" bar from transformers (the caller owns the progress display)."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_space(name: str, weights: Path | None = None, device: str | None = None,
               cache_dir: Path | None = None, offline: bool | None = None) -> SpaceModel:
    """Load a space's backbone. Official weights come from the hub cache (downloaded once unless
    ``offline``, which defaults to ``HF_HUB_OFFLINE``), or from ``weights`` (a local directory)."""
    spec = get_space(name)
    dev = select_device(device)
    if spec.tiny_random:
        if weights is not None:
            raise SpaceError(f"{name} takes no --weights (its weights are generated from a seed)")
        return SpaceModel(spec, spec.identity(TINY_RANDOM_SHA), build_tiny_random(spec).to(dev), dev)
    offline = _offline_default() if offline is None else offline
    folder, sha = _local_dir(spec, weights) if weights is not None else _official_dir(spec, cache_dir, offline)
    try:
        with _quiet_transformers():
            model = Dinov2Model.from_pretrained(str(folder)).eval()
    except Exception as exc:
        raise SpaceError(one_line(f"{name}: cannot load weights from {folder}: {exc}")) from exc
    cfg = model.config
    if cfg.model_type != "dinov2" or cfg.hidden_size != spec.dim or cfg.patch_size != spec.patch:
        raise SpaceError(f"{name}: weights in {folder} are {cfg.model_type} width {cfg.hidden_size} patch "
                         f"{cfg.patch_size}, expected dinov2 width {spec.dim} patch {spec.patch}")
    return SpaceModel(spec, spec.identity(sha), model.to(dev), dev)


def preprocess(spec: SpaceSpec, rgb: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """H×W×3 uint8 → ((3, R, R) float32 normalised and zero-padded, input_size (h, w))."""
    resized = ResizeLongestSide(spec.resolution).apply_image(np.ascontiguousarray(rgb))
    h, w = resized.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float() / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    return F.pad(x, (0, spec.resolution - w, 0, spec.resolution - h)), (h, w)


@torch.no_grad()
def encode_images(sm: SpaceModel, images: Sequence[np.ndarray], batch_size: int = 4) -> list[PatchTokens]:
    """Each image through the backbone once (``batch_size`` at a time); patch tokens in fp32."""
    spec, out = sm.spec, []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        prepared = [preprocess(spec, img) for img in chunk]
        pixels = torch.stack([x for x, _ in prepared]).to(sm.device)
        hidden = sm.model(pixel_values=pixels).last_hidden_state.float()
        patches = hidden[:, 1:, :]  # drop the CLS token (Dinov2Model has no register tokens)
        assert patches.shape[1] == spec.grid * spec.grid, patches.shape
        out.extend(PatchTokens(patches[i], (int(img.shape[0]), int(img.shape[1])), size, spec.grid, spec.patch)
                   for i, (img, (_, size)) in enumerate(zip(chunk, prepared, strict=True)))
    return out


@torch.no_grad()
def pool_segments(tokens: PatchTokens,
                  masks: np.ndarray | torch.Tensor | LazyMasks) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) bool masks in original-image pixels → ((N, C) L2-normalised vectors, (N,) bool valid)."""
    feats = tokens.tokens
    masks = masks.to(feats.device) if isinstance(masks, LazyMasks) else torch.as_tensor(masks, device=feats.device)
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tokens.original_size:
        raise SpaceError(f"masks of shape {tuple(masks.shape)} do not fit an image of size {tokens.original_size}")
    if masks.shape[0] == 0:
        return torch.zeros((0, feats.shape[1])), torch.zeros(0, dtype=torch.bool)
    weights = mask_coverage(masks.bool(), tokens.input_size, tokens.grid, tokens.patch)
    total = weights.sum(dim=1, keepdim=True)
    valid = total[:, 0] > 0
    pooled = F.normalize((weights @ feats) / total.clamp_min(1e-12), dim=1)
    pooled[~valid] = 0
    return pooled, valid


def embed_segments(sm: SpaceModel, rgb: np.ndarray,
                   masks: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One image and its segments' masks → ((N, C) vectors in ``sm.space``, (N,) valid)."""
    return pool_segments(encode_images(sm, [rgb])[0], masks)
