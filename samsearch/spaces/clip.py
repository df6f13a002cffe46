"""CLIP spaces: load transformers' ``CLIPModel`` (both towers) and its tokenizer, embed each segment's masked
crop with the image tower, and text queries with the text tower, in the same normalised space.

Crop recipe ``maskcrop-v1`` (:func:`masked_crop`): the mask's tight box is cut from the image, the pixels
outside the mask inside it are set to CLIP's mean colour (zero after normalisation), the crop is padded to
a centred square with the same colour, resized to the space's ``resolution`` (PIL bicubic, as CLIP's own
preprocessing), and normalised with CLIP's mean/std. Crops of many segments (and images) go through the
image tower in batches; its projected output, L2-normalised, is the segment's vector. Empty masks get a
zero row and ``valid = False``.

Text: the tokenizer (lower-cased byte-level BPE, at most 77 tokens) → the text tower → its projection,
L2-normalised. Official weights need the hub repo's ``vocab.json`` and ``merges.txt`` next to the weights
(downloaded with them, or in the ``--weights DIR`` copy). ``clip-tiny-random`` builds its tokenizer from a
small generated vocabulary (the 256 byte symbols, their end-of-word forms, and merges spelling a fixed list of
words) written once into the cache directory, so it never needs the network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from samsearch.data.masks import masks_to_boxes_xywh
from samsearch.errors import InputError, one_line
from samsearch.identity import EmbeddingSpace
from samsearch.sam.models import default_cache_dir, select_device, sha256_file
from samsearch.spaces.dinov2 import WEIGHT_FILES, _offline_default, _quiet_transformers, _weights_sha
from samsearch.spaces.registry import (
    CLIP_MEAN,
    CLIP_STD,
    TINY_RANDOM_SEED,
    TINY_RANDOM_SHA,
    SpaceError,
    SpaceSpec,
    get_space,
)

TOKENIZER_FILES = ("vocab.json", "merges.txt")
MAX_TEXT_CHARS = 1000  # a query, not a document: the text tower reads at most 77 tokens anyway
FILL = tuple(int(round(c * 255)) for c in CLIP_MEAN)  # outside the mask: CLIP's mean colour
# The words the tiny tokenizer's merges spell (any text still tokenizes, byte by byte).
TINY_WORDS = ("a", "an", "the", "of", "photo", "picture", "red", "green", "blue", "yellow", "white", "black",
              "orange", "purple", "car", "disc", "circle", "square", "triangle", "ring", "shape", "object")


@dataclass
class ClipSpaceModel:
    spec: SpaceSpec
    space: EmbeddingSpace  # identity of the vectors this model produces
    model: CLIPModel
    device: torch.device
    tokenizer: CLIPTokenizer

    @property
    def max_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)


# -- the tiny-random space: seeded weights and a generated tokenizer ---------------------------------------


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's byte → printable-character table (the base symbols of byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_vocab() -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) of the tiny tokenizer, the same every time: byte symbols, their ``</w>`` forms, one
    merge per prefix of each word in :data:`TINY_WORDS`, then CLIP's two special tokens (last, as in CLIP)."""
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars]
    known, merges = set(tokens), []
    for word in TINY_WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        current = parts[0]
        for part in parts[1:]:
            merge = f"{current} {part}"
            current += part
            if current not in known:
                merges.append(merge)
                known.add(current)
                tokens.append(current)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def tiny_tokenizer_dir(cache_dir: Path | None = None) -> Path:
    """The tiny tokenizer's files in the cache (written once, atomically; rewritten if they differ)."""
    folder = (cache_dir if cache_dir is not None else default_cache_dir()) / "tokenizers" / "clip-tiny-random"
    vocab, merges = tiny_vocab()
    want = {"vocab.json": json.dumps(vocab, ensure_ascii=False, sort_keys=True),
            "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n"}
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in want.items():
        path = folder / name
        try:
            if path.read_text(encoding="utf-8") == text:
                continue
        except OSError:
            pass
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return folder


def tiny_random_config(spec: SpaceSpec, vocab_size: int, bos: int, eos: int) -> CLIPConfig:
    width = spec.dim * 2
    common = dict(hidden_size=width, num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                  intermediate_size=width * 4)
    return CLIPConfig(
        text_config=dict(common, vocab_size=vocab_size, max_position_embeddings=77, bos_token_id=bos,
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(common, image_size=spec.resolution, patch_size=spec.patch),
        projection_dim=spec.dim,
    )


def build_tiny_random(spec: SpaceSpec, tokenizer: CLIPTokenizer, seed: int = TINY_RANDOM_SEED) -> CLIPModel:
    """Deterministic: the same seed gives the same weights (the global RNG state is left untouched)."""
    config = tiny_random_config(spec, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(config).eval()


# -- official weights --------------------------------------------------------------------------------------


def _missing_message(spec: SpaceSpec, how: str) -> str:
    return (f"{spec.name}: weights {spec.hf_repo}@{spec.revision} are {how}; pass --weights DIR with a local copy "
            f"of the hub repo (config.json, {WEIGHT_FILES[0]}, {' and '.join(TOKENIZER_FILES)}) or use "
            "clip-tiny-random")


def _official_dir(spec: SpaceSpec, cache_dir: Path | None, offline: bool) -> tuple[Path, str]:
    from huggingface_hub import hf_hub_download

    assert spec.hf_repo is not None
    cache = str(cache_dir if cache_dir is not None else default_cache_dir() / "huggingface")

    def get(name: str) -> Path:
        return Path(hf_hub_download(spec.hf_repo, name, revision=spec.revision, cache_dir=cache,
                                    local_files_only=offline))

    try:
        for name in ("config.json", *TOKENIZER_FILES):
            get(name)
        try:
            weights = get(WEIGHT_FILES[0])
        except Exception:  # older repos: only the pickle
            weights = get(WEIGHT_FILES[1])
    except Exception as exc:  # network, offline mode, missing repo/revision: all end the same way
        how = "not cached and offline" if offline else f"not downloadable ({type(exc).__name__})"
        raise SpaceError(_missing_message(spec, how)) from exc
    return weights.parent, _weights_sha(weights)


def _local_dir(spec: SpaceSpec, weights: Path) -> tuple[Path, str]:
    weights = Path(weights).expanduser()
    found = [weights / f for f in WEIGHT_FILES if (weights / f).is_file()]
    tokenizer = all((weights / f).is_file() for f in TOKENIZER_FILES) or (weights / "tokenizer.json").is_file()
    if not (weights / "config.json").is_file() or not found or not tokenizer:
        raise SpaceError(f"{spec.name}: --weights {weights} must be a directory holding config.json, "
                         f"{' or '.join(WEIGHT_FILES)} and the tokenizer ({' + '.join(TOKENIZER_FILES)}): "
                         f"a copy of the hub repo {spec.hf_repo}")
    return weights, sha256_file(found[0])


def load_space(name: str, weights: Path | None = None, device: str | None = None,
               cache_dir: Path | None = None, offline: bool | None = None) -> ClipSpaceModel:
    """Load a CLIP space: model and tokenizer. Official weights come from the hub cache (downloaded once
    unless ``offline``, which defaults to ``HF_HUB_OFFLINE``), or from ``weights`` (a local directory)."""
    spec = get_space(name)
    if spec.family != "clip":
        raise SpaceError(f"{name} is not a CLIP space")
    dev = select_device(device)
    if spec.tiny_random:
        if weights is not None:
            raise SpaceError(f"{name} takes no --weights (its weights are generated from a seed)")
        with _quiet_transformers():
            tokenizer = CLIPTokenizer.from_pretrained(str(tiny_tokenizer_dir(cache_dir)))
        model = build_tiny_random(spec, tokenizer).to(dev)
        return ClipSpaceModel(spec, spec.identity(TINY_RANDOM_SHA), model, dev, tokenizer)
    offline = _offline_default() if offline is None else offline
    folder, sha = _local_dir(spec, weights) if weights is not None else _official_dir(spec, cache_dir, offline)
    try:
        with _quiet_transformers():
            model = CLIPModel.from_pretrained(str(folder)).eval()
            tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    except Exception as exc:
        raise SpaceError(one_line(f"{name}: cannot load weights from {folder}: {exc}")) from exc
    cfg = model.config
    if (cfg.model_type != "clip" or cfg.projection_dim != spec.dim or cfg.vision_config.patch_size != spec.patch
            or cfg.vision_config.image_size != spec.resolution):
        raise SpaceError(f"{name}: weights in {folder} are {cfg.model_type} projection {cfg.projection_dim} patch "
                         f"{cfg.vision_config.patch_size} at {cfg.vision_config.image_size}, expected clip projection "
                         f"{spec.dim} patch {spec.patch} at {spec.resolution}")
    return ClipSpaceModel(spec, spec.identity(sha), model.to(dev), dev, tokenizer)


# -- embedding ---------------------------------------------------------------------------------------------


def masked_crop(rgb: np.ndarray, mask: np.ndarray, box_xywh: Sequence[float], resolution: int) -> np.ndarray:
    """The ``maskcrop-v1`` input of one non-empty mask: (resolution, resolution, 3) uint8."""
    x, y, w, h = (int(v) for v in box_xywh)
    crop = np.array(rgb[y:y + h, x:x + w], dtype=np.uint8)
    crop[~mask[y:y + h, x:x + w]] = FILL
    side = max(w, h)
    square = np.empty((side, side, 3), dtype=np.uint8)
    square[:] = FILL
    top, left = (side - h) // 2, (side - w) // 2
    square[top:top + h, left:left + w] = crop
    return np.asarray(Image.fromarray(square).resize((resolution, resolution), Image.BICUBIC))


def _projected(out: Any) -> torch.Tensor:
    """A tower's projected features: transformers 5 returns them as ``pooler_output``, 4.x as the tensor."""
    return (out if isinstance(out, torch.Tensor) else out.pooler_output).float()


def normalize_pixels(crops: np.ndarray) -> torch.Tensor:
    """(N, R, R, 3) uint8 → (N, 3, R, R) float32 with CLIP's mean/std."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


@torch.no_grad()
def embed_crops(sm: ClipSpaceModel, crops: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """(N, R, R, 3) uint8 crops → (N, dim) L2-normalised image-tower vectors (fp32, on the CPU)."""
    out = [torch.zeros((0, sm.spec.dim))]
    for start in range(0, len(crops), batch_size):
        pixels = normalize_pixels(crops[start:start + batch_size]).to(sm.device)
        feats = _projected(sm.model.get_image_features(pixel_values=pixels))
        out.append(F.normalize(feats, dim=1).cpu())
    return torch.cat(out)


def embed_images(sm: ClipSpaceModel, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | torch.Tensor],
                 batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Images and their (N_i, H, W) bool masks → per image ((N_i, dim) vectors, (N_i,) valid); every crop of
    every image goes through the image tower in batches of ``batch_size``."""
    crops: list[np.ndarray] = []
    valids: list[np.ndarray] = []
    for rgb, m in zip(images, masks, strict=True):
        m = np.asarray(m.cpu() if isinstance(m, torch.Tensor) else m, dtype=bool)
        if m.ndim != 3 or m.shape[1:] != rgb.shape[:2]:
            raise SpaceError(f"masks of shape {m.shape} do not fit an image of size {tuple(rgb.shape[:2])}")
        boxes = masks_to_boxes_xywh(m)
        valid = m.any(axis=(1, 2))
        crops.extend(masked_crop(rgb, m[i], boxes[i], sm.spec.resolution) for i in np.flatnonzero(valid))
        valids.append(valid)
    res = sm.spec.resolution
    vectors = embed_crops(sm, np.stack(crops) if crops else np.zeros((0, res, res, 3), np.uint8), batch_size)
    out, at = [], 0
    for valid in valids:
        rows = torch.zeros((len(valid), sm.spec.dim))
        n = int(valid.sum())
        rows[torch.from_numpy(valid)] = vectors[at:at + n]
        at += n
        out.append((rows, torch.from_numpy(valid)))
    return out


def embed_segments(sm: ClipSpaceModel, rgb: np.ndarray,
                   masks: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One image and its segments' masks → ((N, dim) vectors in ``sm.space``, (N,) valid)."""
    return embed_images(sm, [rgb], [masks])[0]


@torch.no_grad()
def embed_texts(sm: ClipSpaceModel, texts: Sequence[str]) -> torch.Tensor:
    """Texts → (N, dim) L2-normalised text-tower vectors, comparable with the segments' (fp32, CPU)."""
    texts = [str(t) for t in texts]
    for t in texts:
        if not t.strip():
            raise InputError("the text query is empty")
        if len(t) > MAX_TEXT_CHARS:
            raise InputError(f"the text query has {len(t)} characters; at most {MAX_TEXT_CHARS}")
    enc = sm.tokenizer(texts, padding=True, truncation=True, max_length=sm.max_tokens, return_tensors="pt")
    feats = _projected(sm.model.get_text_features(input_ids=enc["input_ids"].to(sm.device),
                                                  attention_mask=enc["attention_mask"].to(sm.device)))
    return F.normalize(feats, dim=1).cpu()
