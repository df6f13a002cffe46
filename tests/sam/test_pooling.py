import numpy as np
import pytest
import torch

from samsearch.sam.encoder import EncodedImage
from samsearch.sam.pooling import mask_patch_weights, pool_mask_embeddings


def _enc(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn((1, 8, 64, 64), generator=g)
    scale = 1024 / max(h, w)
    return EncodedImage(feats, (h, w), (int(h * scale + 0.5), int(w * scale + 0.5)))


@pytest.mark.parametrize(
    "h, w, rows, cols, patch",
    [
        (256, 512, slice(0, 8), slice(0, 8), (0, 0)),  # scale 2: 8 px → one 16-px patch
        (256, 512, slice(0, 8), slice(8, 16), (0, 1)),  # x is columns
        (256, 512, slice(120, 128), slice(504, 512), (15, 63)),  # bottom-right of the image
        (512, 256, slice(504, 512), slice(0, 8), (63, 0)),  # portrait: padding is on the right
        (2048, 1024, slice(32, 64), slice(0, 32), (1, 0)),  # downscale: 32 px → one patch
    ],
)
def test_mask_covering_one_patch_gives_that_patch_feature(h, w, rows, cols, patch):
    enc = _enc(h, w)
    mask = torch.zeros((1, h, w), dtype=torch.bool)
    mask[0, rows, cols] = True
    vec, valid = pool_mask_embeddings(mask, enc)
    expected = torch.nn.functional.normalize(enc.features[0, :, patch[0], patch[1]], dim=0)
    assert valid.tolist() == [True]
    assert torch.allclose(vec[0], expected, atol=1e-5)


def test_weights_are_coverage_fractions_and_padding_gets_nothing():
    enc = _enc(256, 512)
    mask = torch.ones((1, 256, 512), dtype=torch.bool)
    weights = mask_patch_weights(mask, enc).reshape(64, 64)
    assert torch.allclose(weights[:32], torch.ones(32, 64))  # image occupies the top 512 input rows
    assert weights[32:].sum() == 0  # padding
    half = torch.zeros((1, 256, 512), dtype=torch.bool)
    half[0, :, :4] = True  # half of the first patch column
    assert torch.allclose(mask_patch_weights(half, enc).reshape(64, 64)[:32, 0], torch.full((32,), 0.5))


def test_pooled_vectors_are_unit_norm_weighted_means_and_empty_is_invalid():
    enc = _enc(100, 100)
    masks = torch.zeros((3, 100, 100), dtype=torch.bool)
    masks[0, 10:60, 20:90] = True
    masks[1, :, :] = True
    vec, valid = pool_mask_embeddings(masks, enc)
    assert valid.tolist() == [True, True, False]
    assert torch.allclose(vec[:2].norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.count_nonzero(vec[2]) == 0
    w = mask_patch_weights(masks[:1], enc)
    manual = (w @ enc.features[0].reshape(8, -1).T) / w.sum()
    assert torch.allclose(vec[0], torch.nn.functional.normalize(manual, dim=1)[0], atol=1e-5)


def test_no_masks():
    vec, valid = pool_mask_embeddings(torch.zeros((0, 10, 10), dtype=torch.bool), _enc(10, 10))
    assert vec.shape == (0, 8) and valid.shape == (0,)


def test_pooling_matches_encoder_frame_of_real_image(tiny_model):
    # End to end through the real encoder: the input_size recorded is the resized size SAM used.
    from samsearch.sam.encoder import encode_image

    rgb = np.zeros((192, 256, 3), dtype=np.uint8)
    enc = encode_image(tiny_model.sam, rgb)
    assert enc.original_size == (192, 256) and enc.input_size == (768, 1024)
    assert enc.features.shape == (1, 256, 64, 64)


def _area_resize_weights(masks, enc, grid=64):
    """The pooling weights as first defined (maskpool-v1): area-resize each mask to SAM's input frame, pad
    to 1024×1024, average 16×16 patches. mask_patch_weights must give the same numbers without resizing."""
    h, w = enc.input_size
    resized = torch.nn.functional.interpolate(masks[:, None].float(), size=(h, w), mode="area")
    padded = torch.nn.functional.pad(resized, (0, grid * 16 - w, 0, grid * 16 - h))
    return torch.nn.functional.avg_pool2d(padded, kernel_size=16).flatten(1)


@pytest.mark.parametrize("h, w", [(192, 256), (256, 512), (512, 256), (100, 100), (1000, 1333), (37, 1500),
                                  (2048, 1024), (3, 5)])
def test_separable_weights_equal_the_area_resize_definition(h, w):
    enc = _enc(h, w)
    g = torch.Generator().manual_seed(h * w)
    masks = torch.rand((4, h, w), generator=g) > 0.6
    masks[0] = False
    masks[1] = True
    masks[2, : h // 3, w // 2:] = False  # a block edge that does not fall on a patch edge
    assert torch.allclose(mask_patch_weights(masks, enc), _area_resize_weights(masks, enc), rtol=0, atol=1e-6)
