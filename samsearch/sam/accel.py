"""Accelerator options for the model stages: precision (autocast), ``torch.compile``, fused attention.

* ``precision``: ``fp32`` (default everywhere), ``bf16`` or ``fp16`` autocast around the image encoder and
  the mask decoder. Pooling, stability scores and everything stored stay fp32. ``fp16`` needs CUDA; ``bf16``
  works on CPU too but is slow there without native bf16 units, so fp32 stays the CPU default.
* ``compile``: ``torch.compile`` of the image encoder (the dominant cost; fixed 1024×1024 input shape, so it
  compiles once per batch size). CUDA only: an error with a clear message on CPU.
* fused attention: the image encoder's attention (with its decomposed relative-position bias) through
  ``F.scaled_dot_product_attention`` instead of materialising softmax(q kᵀ) in Python-level ops. The mask
  decoder's attention is fused already (:mod:`samsearch.sam.decoder`). Applied with :func:`fused_attention`, a
  context manager that restores the original modules on exit.
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import Attention as EncoderAttention
from segment_anything.modeling.image_encoder import get_rel_pos

from samsearch.errors import InputError

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
DECODERS: tuple[str, ...] = ("fast", "exact")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Rough activation memory of one 1024×1024 image through the encoder (fp32, fused attention), by width.
_ENCODER_GIB_PER_IMAGE = {768: 1.5, 1024: 2.5, 1280: 3.5}


@dataclass
class ExecutionOptions:
    """How ingest runs, not what it computes (so not part of the settings hash; recorded with each run).
    ``None`` fields get per-device defaults from :meth:`resolved`."""

    decoder: str = "fast"  # fast: samsearch.sam.decoder; exact: segment_anything's MaskDecoder, bit-identical
    precision: str = "fp32"
    compile: bool = False
    fused_attention: bool = True
    encoder_batch: int | None = None  # images per image-encoder call (CPU 1; CUDA: what memory allows, ≤ 8)
    decoder_group: int | None = None  # prompts per fast-decoder step (CPU 4; CUDA 64)
    loaders: int | None = None  # threads reading, hashing, claiming, decoding, resizing (default: cores, 2–8)
    prefetch: int | None = None  # decoded images waiting for the model (default max(2 × encoder_batch, loaders) + 2)
    write_queue: int | None = None  # computed images waiting for the writer (CPU 4, CUDA 16)
    pipeline: bool = True  # overlap the stages; False: one image at a time in the calling thread

    def validate(self, device: torch.device) -> None:
        if self.decoder not in DECODERS:
            raise InputError(f"--decoder must be one of {', '.join(DECODERS)}, not {self.decoder!r}")
        check_precision(self.precision, device)
        if self.compile and device.type != "cuda":
            raise InputError(f"--compile needs a CUDA device (this run uses {device}): on CPU, compiling the "
                             "encoder costs minutes and gains little")
        for name in ("encoder_batch", "decoder_group", "prefetch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
        if (self.loaders is not None and self.loaders < 1) or (self.write_queue is not None and self.write_queue < 1):
            raise InputError("--loaders and the write queue must be at least 1")

    def resolved(self, model: Any) -> ExecutionOptions:
        """A copy with the per-device defaults filled in (``model``: a LoadedModel); validates."""
        device = model.device
        self.validate(device)
        encoder_batch = self.encoder_batch or default_encoder_batch(model.sam, device, self.precision)
        loaders = self.loaders or default_loaders()
        return replace(
            self,
            encoder_batch=encoder_batch,
            decoder_group=self.decoder_group or (4 if device.type == "cpu" else 64),
            loaders=loaders,
            # enough decoded images queued to keep every loader busy while the model works
            prefetch=self.prefetch or max(2 * encoder_batch, loaders) + 2,
            write_queue=self.write_queue or (4 if device.type == "cpu" else 16),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_loaders(cpu_count: int | None = None) -> int:
    """Loader threads: one per core (image decoding releases the GIL), at least 2, at most 8 (beyond that
    the claim lock and the model, not decoding, bound ingest)."""
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return min(8, max(2, cores))


def default_encoder_batch(sam: Sam, device: torch.device, precision: str = "fp32") -> int:
    """Images per encoder call: 1 on CPU (no gain from batching there); on CUDA as many as half the free
    memory holds by a rough per-image estimate, at most 8."""
    if device.type != "cuda":
        return 1
    width = int(sam.image_encoder.patch_embed.proj.out_channels)
    per_image = _ENCODER_GIB_PER_IMAGE.get(width, 3.5) * (0.5 if precision != "fp32" else 1.0)
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(8, int(free / 2**30 * 0.5 / per_image)))


def check_precision(precision: str, device: torch.device) -> None:
    """Raise InputError when ``precision`` cannot run on ``device``."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise InputError(f"--precision fp16 needs a CUDA device (this run uses {device}); use fp32 or bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use fp16")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def compile_encoder(sam: Sam) -> None:
    """Replace the image encoder by its ``torch.compile`` d version (CUDA only; see ExecutionOptions)."""
    if not getattr(sam.image_encoder, "_samsearch_compiled", False):
        compiled = torch.compile(sam.image_encoder)
        compiled._samsearch_compiled = True  # type: ignore[attr-defined]
        sam.image_encoder = compiled


def _fused_forward(self: EncoderAttention, x: torch.Tensor) -> torch.Tensor:
    """SAM's encoder attention, with the relative-position bias passed to the fused kernel as a mask."""
    b, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, H·W, d)
    bias = None
    if self.use_rel_pos:
        r_h = get_rel_pos(h, h, self.rel_pos_h).to(q.dtype)
        r_w = get_rel_pos(w, w, self.rel_pos_w).to(q.dtype)
        r_q = q.reshape(b, self.num_heads, h, w, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w)
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, self.num_heads, h * w, h * w)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(out)


@contextlib.contextmanager
def fused_attention(sam: Sam, enabled: bool = True) -> Iterator[None]:
    """Run the image encoder's attention blocks through fused SDPA while the context is open."""
    patched = []
    if enabled:
        for module in sam.image_encoder.modules():
            if isinstance(module, EncoderAttention) and "forward" not in module.__dict__:
                module.forward = types.MethodType(_fused_forward, module)
                patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward
