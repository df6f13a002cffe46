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


def preprocess_image(sam: Sam, rgb: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """Exactly what ``SamPredictor.set_image`` does before the encoder: resize (PIL, like SAM), to
    tensor, normalise and pad. Returns (1×3×1024×1024 tensor on the model's device, input_size)."""
    transform = resize_transform(sam)
    resized = transform.apply_image(rgb)
    tensor = torch.as_tensor(resized, device=sam.device).permute(2, 0, 1).contiguous()[None]
    input_size = (int(tensor.shape[-2]), int(tensor.shape[-1]))
    return sam.preprocess(tensor), input_size


@torch.no_grad()
def encode_images(sam: Sam, images: Sequence[np.ndarray], batch_size: int = 1) -> list[EncodedImage]:
    """Encode RGB uint8 images (H×W×3), ``batch_size`` at a time through the ViT."""
    out: list[EncodedImage] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        prepared = [preprocess_image(sam, img) for img in chunk]
        feats = sam.image_encoder(torch.cat([t for t, _ in prepared]))
        for i, (img, (_, input_size)) in enumerate(zip(chunk, prepared, strict=True)):
            out.append(EncodedImage(feats[i:i + 1], (int(img.shape[0]), int(img.shape[1])), input_size))
    return out


def encode_image(sam: Sam, rgb: np.ndarray) -> EncodedImage:
    return encode_images(sam, [rgb])[0]
