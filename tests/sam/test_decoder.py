"""The fast mask decoder, the separable upsampling and the fast automatic mask generator against
segment_anything's own (same weights, same settings): equal up to float rounding, and the parity bar
(≥ 95 % of reference masks matched at IoU ≥ 0.9, counts within 5 %) on tiny-random and a random vit_b."""

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam

from samsearch.data.imageio import load_image
from samsearch.sam.amg import AmgSettings, _point_prompts, generate_masks
from samsearch.sam.decoder import PromptDecoder
from samsearch.sam.encoder import EncodedImage, encode_image, preprocess_image, resize_transform
from samsearch.sam.logits import LogitUpsampler
from samsearch.sam.models import MODELS, build_sam
from samsearch.sam.parity import mask_parity

MANY = dict(points_per_side=4, pred_iou_thresh=-1.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


@pytest.fixture(scope="module")
def image(tiny_model, shapes):
    rgb = load_image(shapes.images[0].path).rgb
    return rgb, encode_image(tiny_model.sam, rgb)


def _reference_decoder(sam, enc, sparse, dense, multimask):
    return sam.mask_decoder(image_embeddings=enc.features, image_pe=sam.prompt_encoder.get_dense_pe(),
                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                            multimask_output=multimask)


@pytest.mark.parametrize("prompt, multimask, group, upscale_step", [
    ("points", True, 4, 1),  # the CPU defaults
    ("points", True, 64, 16),  # the accelerator defaults (batched upscaling), run on CPU
    ("boxes", False, 3, 2),
])
@torch.no_grad()
def test_prompt_decoder_matches_mask_decoder(tiny_model, image, prompt, multimask, group, upscale_step):
    sam = tiny_model.sam
    rgb, enc = image
    if prompt == "points":
        grid = np.array([[x, y] for x in (20.0, 120.0, 230.0) for y in (15.0, 150.0)])
        sparse, dense = _point_prompts(sam, enc, grid)
    else:
        boxes = torch.tensor([[10.0, 10.0, 90.0, 120.0], [100.0, 40.0, 250.0, 180.0], [0, 0, 255, 191]])
        boxes = resize_transform(sam).apply_boxes_torch(boxes, enc.original_size)
        sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    low_ref, iou_ref = _reference_decoder(sam, enc, sparse, dense, multimask)
    out = PromptDecoder(sam, enc.features, group, upscale_step).decode(sparse, multimask=multimask)
    assert out.index.tolist() == list(range(len(sparse)))
    assert out.low_res.shape == low_ref.shape and out.iou.shape == iou_ref.shape
    assert torch.allclose(out.iou, iou_ref, atol=1e-5)
    scale = low_ref.abs().max()
    assert (out.low_res - low_ref).abs().max() <= 1e-4 * scale


@torch.no_grad()
def test_iou_threshold_upscales_only_prompts_with_a_passing_mask(tiny_model, image):
    sam = tiny_model.sam
    _, enc = image
    points = np.array([[x, y] for x in (30.0, 128.0, 220.0) for y in (30.0, 100.0, 170.0)])
    sparse, _ = _point_prompts(sam, enc, points)
    decoder = PromptDecoder(sam, enc.features, group=2)
    full = decoder.decode(sparse)
    thresh = float(full.iou.max(dim=1).values.median())
    part = decoder.decode(sparse, iou_thresh=thresh)
    expected = torch.nonzero((full.iou > thresh).any(dim=1))[:, 0]
    assert 0 < len(expected) < len(points)
    assert part.index.tolist() == expected.tolist()
    assert torch.equal(part.iou, full.iou)
    assert torch.allclose(part.low_res, full.low_res[expected], atol=1e-6)


@pytest.mark.parametrize("size, separable", [((192, 256), True), ((37, 300), True), ((700, 500), True),
                                             ((1100, 900), False)])
def test_logit_upsampler_matches_postprocess_masks(tiny_model, size, separable):
    sam = tiny_model.sam
    h, w = size
    scale = 1024 / max(h, w)
    enc = EncodedImage(torch.zeros(1, 256, 64, 64), (h, w), (int(h * scale + 0.5), int(w * scale + 0.5)))
    low = torch.randn((3, 256, 256), generator=torch.Generator().manual_seed(1))
    up = LogitUpsampler(sam, enc)
    assert up.separable is separable
    ref = sam.postprocess_masks(low[:, None], enc.input_size, enc.original_size)[:, 0]
    assert torch.allclose(up(low), ref, atol=1e-5)
    assert torch.equal(LogitUpsampler(sam, enc, exact=True)(low), ref)


@pytest.mark.parametrize(
    "settings",
    [
        MANY,  # every mask survives (48 masks of 16 prompts)
        dict(MANY, pred_iou_thresh=-0.15, points_per_batch=7),  # about half filtered, ragged batches
        dict(points_per_side=2),  # SAM's defaults: the random decoder's masks are all rejected
    ],
)
def test_fast_amg_parity_tiny_random(tiny_model, image, settings):
    rgb, enc = image
    reference = SamAutomaticMaskGenerator(tiny_model.sam, **settings).generate(rgb)
    ours = generate_masks(tiny_model.sam, enc, AmgSettings(**settings))
    parity = mask_parity(np.stack([r["segmentation"] for r in reference]) if reference else
                         np.zeros((0, *rgb.shape[:2]), bool), ours.masks)
    assert parity.ok(), parity.as_dict()
    if settings is MANY:
        assert len(reference) == 48 and parity.matched(0.99) >= 0.95
    ref_iou = sorted(r["predicted_iou"] for r in reference)
    assert np.allclose(sorted(ours.predicted_iou.tolist()), ref_iou, atol=1e-4) or len(ours) != len(reference)


class _GivenFeatures(torch.nn.Module):
    """Stands in for the image encoder inside the reference generator: checks it receives exactly the input
    we encoded and returns our features, so the 14-s vit_b encoder runs once for both generators."""

    def __init__(self, img_size: int, expected: torch.Tensor, features: torch.Tensor):
        super().__init__()
        self.img_size, self.expected, self.features = img_size, expected, features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert torch.equal(x, self.expected)
        return self.features


@torch.no_grad()
def test_fast_amg_parity_random_vit_b(shapes):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        sam = build_sam(MODELS["vit_b"])
    rgb = load_image(shapes.images[2].path).rgb
    x, input_size = preprocess_image(sam, rgb)
    enc = EncodedImage(sam.image_encoder(x), rgb.shape[:2], input_size)
    reference_sam = Sam(_GivenFeatures(sam.image_encoder.img_size, x, enc.features), sam.prompt_encoder,
                        sam.mask_decoder, sam.pixel_mean.flatten().tolist(), sam.pixel_std.flatten().tolist())
    # A predicted-IoU threshold in the widest gap of the middle half of the scores (no near-ties to flip),
    # ragged prompt batches; no NMS, so every surviving mask is compared.
    scores = np.sort(generate_masks(sam, enc, AmgSettings(**MANY)).predicted_iou.numpy())
    middle = scores[len(scores) // 4: 3 * len(scores) // 4 + 1]
    gap = int(np.argmax(np.diff(middle)))
    settings = dict(MANY, pred_iou_thresh=float(middle[gap] + middle[gap + 1]) / 2, points_per_batch=7)
    reference = SamAutomaticMaskGenerator(reference_sam, **settings).generate(rgb)
    ours = generate_masks(sam, enc, AmgSettings(**settings))
    parity = mask_parity(np.stack([r["segmentation"] for r in reference]), ours.masks)
    assert 10 <= len(reference) < 48 and parity.ok(), (settings, parity.as_dict())
    assert parity.matched(0.99) >= 0.95
