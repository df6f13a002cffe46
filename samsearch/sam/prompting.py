"""Prompted segmentation on an encoded image: boxes and points → masks (as SamPredictor.predict)."""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.modeling import Sam

from samsearch.sam.decoder import PromptDecoder
from samsearch.sam.encoder import EncodedImage, resize_transform
from samsearch.sam.logits import LogitUpsampler


@torch.no_grad()
def masks_from_boxes(
    sam: Sam, enc: EncodedImage, boxes_xyxy: np.ndarray, batch_size: int = 64, exact: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask per box (single-mask output, as the memory-bank recipe prompts SAM).

    ``exact``: SAM's own decoder and upsampling; otherwise the fast decoder (equal up to rounding).
    Returns (N,H,W) bool masks and (N,) predicted IoU, on the model's device."""
    h, w = enc.original_size
    n = len(boxes_xyxy)
    masks = torch.empty((n, h, w), dtype=torch.bool, device=sam.device)
    ious = torch.empty(n, device=sam.device)
    transform = resize_transform(sam)
    upsample = LogitUpsampler(sam, enc, exact=exact)
    decoder = None if exact or n == 0 else PromptDecoder(sam, enc.features)
    for s in range(0, n, batch_size):
        boxes = torch.as_tensor(np.asarray(boxes_xyxy[s:s + batch_size], dtype=np.float32), device=sam.device)
        boxes = transform.apply_boxes_torch(boxes, enc.original_size)
        with torch.autocast(sam.device.type, enabled=False):  # positional encodings of coordinates stay fp32
            sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        if decoder is None:
            low_res, iou = sam.mask_decoder(
                image_embeddings=enc.features,
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
        else:
            out = decoder.decode(sparse, multimask=False)
            low_res, iou = out.low_res, out.iou
        step = upsample.chunk()
        for c in range(0, len(low_res), step):
            logits = upsample(low_res[c:c + step, 0])
            masks[s + c:s + c + len(logits)] = logits > sam.mask_threshold
        ious[s:s + batch_size] = iou[:, 0]
    return masks, ious


@torch.no_grad()
def mask_from_points(
    sam: Sam,
    enc: EncodedImage,
    points_xy: np.ndarray,
    labels: np.ndarray,
    box_xyxy: np.ndarray | None = None,
) -> tuple[torch.Tensor, float]:
    """The best of SAM's multimask outputs (by predicted IoU) for one prompt made of points
    (label 1 = foreground, 0 = background) and an optional box. Returns ((H,W) bool mask, IoU)."""
    transform = resize_transform(sam)
    points = None
    if len(points_xy):
        coords = torch.as_tensor(transform.apply_coords(np.asarray(points_xy, dtype=np.float64),
                                                        enc.original_size), device=sam.device)[None]
        points = (coords.float(), torch.as_tensor(labels, dtype=torch.int, device=sam.device)[None])
    boxes = None
    if box_xyxy is not None:
        boxes = transform.apply_boxes_torch(torch.as_tensor(box_xyxy, dtype=torch.float32,
                                                            device=sam.device)[None], enc.original_size)
    multimask = box_xyxy is None and len(points_xy) == 1  # SAM's advice: multimask for ambiguous prompts
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    low_res, iou = sam.mask_decoder(
        image_embeddings=enc.features,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    best = int(torch.argmax(iou[0]))
    logits = sam.postprocess_masks(low_res[:, best:best + 1], enc.input_size, enc.original_size)
    return logits[0, 0] > sam.mask_threshold, float(iou[0, best])
