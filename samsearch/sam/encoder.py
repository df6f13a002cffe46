"""Image encoder stage: SAM's resize-longest-side + normalise + pad, then the ViT, batched.

``EncodedImage`` holds what every later stage needs from one encoder pass: the 256×64×64 feature map
(prompting and mask pooling both read it, so an image is never encoded twice) and the two sizes that
define the coordinate transform between the original image and SAM's 1024×1024 input frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide


@dataclass
class EncodedImage:
    features: torch.Tensor  # (1, C, 64, 64) on the model's device
    original_size: tuple[int, int]  # (H, W) of the image as given
    input_size: tuple[int, int]  # (h, w) after resize-longest-side to 1024, before padding


def resize_transform(sam: Sam) -> ResizeLongestSide:
    return ResizeLongestSide(sam.image_encoder.img_size)


def too_thin(size_hw: tuple[int, int], long_side: int) -> str | None:
    """Why SAM cannot take an image this thin: its resize-longest-side (to ``long_side``, rounding half
    up like ``ResizeLongestSide``) would make the short side 0 pixels. None when it can."""
    h, w = int(size_hw[0]), int(size_hw[1])
    if h > 0 and w > 0 and int(min(h, w) * long_side / max(h, w) + 0.5) >= 1:
        return None
    return (f"image is {w}x{h}: too thin for SAM (resized to {long_side} px on the long side, the short side "
            "would be 0 pixels)")


def resize_image(sam: Sam, rgb: np.ndarray) -> np.ndarray:
    """SAM's resize-longest-side (PIL, like ``SamPredictor.set_image``): H×W×3 uint8 → h×w×3 uint8.
    ValueError (saying why) for an image too thin for it (see :func:`too_thin`)."""
    thin = too_thin(rgb.shape[:2], sam.image_encoder.img_size)
    if thin is not None:
        raise ValueError(thin)
    return resize_transform(sam).apply_image(rgb)


def preprocess_resized(sam: Sam, resized: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """A resized uint8 image → (1×3×1024×1024 normalised, padded tensor on the model's device, input_size).
    On CUDA the upload goes through pinned memory without blocking the host."""
    tensor = torch.from_numpy(np.ascontiguousarray(resized))
    if sam.device.type == "cuda":
        tensor = tensor.pin_memory()
    tensor = tensor.to(sam.device, non_blocking=True).permute(2, 0, 1).contiguous()[None]
    input_size = (int(tensor.shape[-2]), int(tensor.shape[-1]))
    return sam.preprocess(tensor), input_size


def preprocess_image(sam: Sam, rgb: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """Exactly what ``SamPredictor.set_image`` does before the encoder: resize (PIL, like SAM), to
    tensor, normalise and pad. Returns (1×3×1024×1024 tensor on the model's device, input_size)."""
    return preprocess_resized(sam, resize_image(sam, rgb))


@torch.no_grad()
def encode_resized(sam: Sam, resized: Sequence[np.ndarray],
                   original_sizes: Sequence[tuple[int, int]]) -> list[EncodedImage]:
    """One image-encoder call on already-resized images (see :func:`resize_image`). Features are fp32
    whatever the autocast precision."""
    prepared = [preprocess_resized(sam, r) for r in resized]
    feats = sam.image_encoder(torch.cat([t for t, _ in prepared])).float()
    return [EncodedImage(feats[i:i + 1], (int(size[0]), int(size[1])), input_size)
            for i, (size, (_, input_size)) in enumerate(zip(original_sizes, prepared, strict=True))]


@torch.no_grad()
def encode_images(sam: Sam, images: Sequence[np.ndarray], batch_size: int = 1) -> list[EncodedImage]:
    """Encode RGB uint8 images (H×W×3), ``batch_size`` at a time through the ViT."""
    out: list[EncodedImage] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        out.extend(encode_resized(sam, [resize_image(sam, img) for img in chunk],
                                  [img.shape[:2] for img in chunk]))
    return out


def encode_image(sam: Sam, rgb: np.ndarray) -> EncodedImage:
    return encode_images(sam, [rgb])[0]
