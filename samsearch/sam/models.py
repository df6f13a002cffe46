"""SAM model registry: official checkpoints (download, sha256 check, cache) and ``tiny-random``.

``tiny-random`` is the real SAM architecture (the same image encoder, prompt encoder and mask decoder
classes from ``segment-anything``) with a small encoder and deterministic seeded random weights. It
carries NO learned semantics: it exists so tests and offline smoke runs exercise the real code path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from samsearch.errors import SamsearchError
from samsearch.identity import ModelRef

CHECKPOINT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    filename: str | None = None  # official checkpoint file name; None for random-weight models
    sha256: str | None = None
    size_bytes: int | None = None

    @property
    def url(self) -> str | None:
        return CHECKPOINT_BASE_URL + self.filename if self.filename else None


MODELS: dict[str, ModelSpec] = {
    "vit_b": ModelSpec(
        "vit_b", 768, 12, 12, (2, 5, 8, 11), "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383,
    ),
    "vit_l": ModelSpec(
        "vit_l", 1024, 24, 16, (5, 11, 17, 23), "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607,
    ),
    "vit_h": ModelSpec(
        "vit_h", 1280, 32, 16, (7, 15, 23, 31), "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879,
    ),
    # Same architecture, small encoder, seeded random weights: no learned semantics.
    "tiny-random": ModelSpec("tiny-random", 96, 2, 2, (1,)),
}
TINY_RANDOM_SEED = 0
TINY_RANDOM_SHA = f"seed{TINY_RANDOM_SEED:016d}"  # what identifies tiny-random's weights


class ModelError(SamsearchError):
    """A model could not be built, downloaded or loaded."""


@dataclass
class LoadedModel:
    name: str
    sam: Sam
    device: torch.device
    checkpoint_sha256: str  # identifies the weights; "seed:<n>" for tiny-random
    checkpoint_path: Path | None

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.checkpoint_sha256)

    @property
    def key(self) -> str:
        """What produced the weights, short enough for a payload (see :class:`ModelRef`)."""
        return self.ref.key


def model_ref(name: str, checkpoint: Path | None = None) -> ModelRef:
    """The identity ``load_model(name, checkpoint)`` will report, without building the network."""
    spec = get_spec(name)
    if name == "tiny-random":
        if checkpoint is not None:
            raise ModelError("tiny-random takes no --checkpoint (its weights are generated from a seed)")
        return ModelRef(name, TINY_RANDOM_SHA)
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ModelError(f"{path}: checkpoint file not found")
        return ModelRef(name, sha256_file(path))
    assert spec.sha256 is not None
    return ModelRef(name, spec.sha256)


def build_sam(spec: ModelSpec) -> Sam:
    """The SAM network for ``spec`` with freshly initialised weights (as segment_anything builds it)."""
    image_size, patch_size, prompt_dim = 1024, 16, 256
    grid = image_size // patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.encoder_depth,
            embed_dim=spec.encoder_embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.encoder_num_heads,
            patch_size=patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=list(spec.encoder_global_attn_indexes),
            window_size=14,
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def build_tiny_random(seed: int = TINY_RANDOM_SEED) -> Sam:
    """Deterministic: the same seed gives the same weights (the global RNG state is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_sam(MODELS["tiny-random"])


def default_cache_dir() -> Path:
    env = os.environ.get("SAMSEARCH_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "samsearch"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path, expected_sha256: str, size: int | None, progress: bool) -> None:
    """Stream ``url`` into a temp file beside ``dest``, check sha256, then rename (never a partial file)."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or size or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        if digest.hexdigest() != expected_sha256:
            raise ModelError(
                f"{url}: downloaded file has sha256 {digest.hexdigest()}, expected {expected_sha256}; "
                "not kept (try again)"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def resolve_checkpoint(
    name: str,
    checkpoint: Path | None = None,
    cache_dir: Path | None = None,
    download: bool = True,
    progress: bool = True,
) -> tuple[Path, str]:
    """The checkpoint file for an official model and its sha256: ``checkpoint`` if given, else the
    cached download, else a fresh download from the official URL (checked against the known hash)."""
    spec = get_spec(name)
    if checkpoint is not None:
        checkpoint = Path(checkpoint).expanduser()
        if not checkpoint.is_file():
            raise ModelError(f"{checkpoint}: checkpoint file not found")
        return checkpoint, sha256_file(checkpoint)
    if spec.filename is None or spec.sha256 is None or spec.url is None:
        raise ModelError(f"model {name!r} has no official checkpoint")
    cached = (cache_dir or default_cache_dir()) / spec.filename
    if cached.is_file():
        return cached, spec.sha256  # only ever written after a verified download
    if not download:
        raise ModelError(f"{cached}: no cached checkpoint for {name}")
    try:
        _download(spec.url, cached, spec.sha256, spec.size_bytes, progress)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise ModelError(
            f"cannot download the {name} checkpoint from {spec.url} ({exc}); download it elsewhere and "
            f"pass --checkpoint FILE, or copy it to {cached}; or use --model tiny-random offline"
        ) from exc
    return cached, spec.sha256


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


def select_device(device: str | None = None) -> torch.device:
    """``None``/"auto": CUDA when present, else CPU; otherwise exactly what was asked."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelError(f"invalid device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def load_model(
    name: str = "vit_b",
    checkpoint: Path | str | None = None,
    device: str | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Build the network and load its weights safely (``weights_only=True``) onto ``device``."""
    spec = get_spec(name)
    dev = select_device(device)
    if name == "tiny-random":
        if checkpoint is not None:
            raise ModelError("tiny-random takes no --checkpoint (its weights are generated from a seed)")
        sam = build_tiny_random()
        return LoadedModel(name, sam.to(dev), dev, TINY_RANDOM_SHA, None)
    ckpt_path, sha = resolve_checkpoint(name, Path(checkpoint) if checkpoint else None, cache_dir,
                                        progress=progress)
    sam = build_sam(spec)
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        sam.load_state_dict(state)
    except Exception as exc:  # torch raises many types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{ckpt_path}: not a valid {name} checkpoint ({first})") from exc
    return LoadedModel(name, sam.to(dev), dev, sha, ckpt_path)


def copy_into_cache(name: str, source: Path, cache_dir: Path | None = None) -> Path:
    """Verify ``source`` against the official hash and place it in the cache (for offline installs)."""
    spec = get_spec(name)
    if spec.sha256 is None or spec.filename is None:
        raise ModelError(f"model {name!r} has no official checkpoint")
    got = sha256_file(source)
    if got != spec.sha256:
        raise ModelError(f"{source}: sha256 {got} does not match the official {name} checkpoint")
    dest = (cache_dir or default_cache_dir()) / spec.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    return dest
