"""Low-resolution mask logits (256×256) → logits at the original image resolution.

SAM's ``postprocess_masks`` upsamples bilinearly to the 1024×1024 input frame, crops the padding, and
resamples bilinearly to the original size. Both steps are linear and separable, so the whole chain is
``A_y · X · A_xᵀ`` with two small interpolation matrices, built here by pushing the identity through the
very same ``F.interpolate`` calls. For images up to about a megapixel the two matrix products are several
times cheaper than materialising the 1024×1024 intermediate; above that the interpolation is used as is.
Both give SAM's values up to float rounding (``exact=True`` always uses SAM's own function).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from samsearch.sam.encoder import EncodedImage

# Above this many output pixels per mask the dense products cost more than the interpolation.
SEPARABLE_MAX_PIXELS = 800_000


def interpolation_matrix(n_low: int, frame: int, kept: int, out: int, device=None,
                         dtype=torch.float32) -> torch.Tensor:
    """(out, n_low): bilinear n_low → frame, keep the first ``kept`` samples, bilinear kept → out."""
    eye = torch.eye(n_low, device=device, dtype=dtype)[None, :, :, None]  # one unit impulse per channel
    a = F.interpolate(eye, (frame, 1), mode="bilinear", align_corners=False)[:, :, :kept]
    a = F.interpolate(a, (out, 1), mode="bilinear", align_corners=False)
    return a[0, :, :, 0].T.contiguous()


class LogitUpsampler:
    """Callable: (N, 256, 256) low-res logits → (N, H, W) logits at ``enc.original_size``."""

    def __init__(self, sam: Sam, enc: EncodedImage, exact: bool = False, dtype: torch.dtype = torch.float32):
        self.sam = sam
        self.enc = enc
        h, w = enc.original_size
        self.separable = not exact and h * w <= SEPARABLE_MAX_PIXELS
        if self.separable:
            frame = sam.image_encoder.img_size
            n_low = 4 * sam.prompt_encoder.image_embedding_size[0]
            dev = sam.device
            self.a_y = interpolation_matrix(n_low, frame, enc.input_size[0], h, dev, dtype)
            self.a_x_t = interpolation_matrix(n_low, frame, enc.input_size[1], w, dev, dtype).T.contiguous()

    def chunk(self, budget: float = 8e6) -> int:
        """Masks per call that keep the full-resolution logits of one call near ``budget`` elements."""
        h, w = self.enc.original_size
        return max(1, int(budget // (h * w)))

    def __call__(self, low_res: torch.Tensor) -> torch.Tensor:
        with torch.autocast(low_res.device.type, enabled=False):  # thresholds are applied to these: fp32
            if self.separable:
                return self.a_y @ (low_res.to(self.a_y.dtype) @ self.a_x_t)
            low = low_res.float()[:, None]
            return self.sam.postprocess_masks(low, self.enc.input_size, self.enc.original_size)[:, 0]
