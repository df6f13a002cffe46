"""DINOv2 spaces on real transformers modules: tiny-random weights (real architecture, seeded), pooling
parity against a direct reference, local and offline weight loading, and class separation on the
synthetic shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import Dinov2Config, Dinov2Model

from samsearch.data.synthetic import make_dataset
from samsearch.errors import InputError
from samsearch.sam.models import sha256_file
from samsearch.spaces.dinov2 import build_tiny_random, embed_segments, encode_images, load_space, pool_segments
from samsearch.spaces.registry import IMAGENET_MEAN, IMAGENET_STD, SPACES, SpaceError, get_space, tiny_random_identity

TINY = "dinov2-tiny-random"


def read_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def tiny():
    return load_space(TINY, device="cpu")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("shapes"), n_images=40, seed=5)


def _reference(model: Dinov2Model, resolution: int, patch: int, rgb: np.ndarray, masks: np.ndarray) -> torch.Tensor:
    """Straight from the library's output: resize the image (PIL bilinear, as SAM does) and each mask (per-pixel area
    average) to the longest-side-``resolution`` frame, pad both, average the mask over each patch, and take
    the weighted mean of ``last_hidden_state``'s patch tokens."""
    hgt, wid = rgb.shape[:2]
    scale = resolution / max(hgt, wid)
    h, w = int(hgt * scale + 0.5), int(wid * scale + 0.5)
    img = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    img = (img - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    pixels = torch.zeros((1, 3, resolution, resolution))
    pixels[0, :, :h, :w] = torch.from_numpy(img).permute(2, 0, 1)
    with torch.no_grad():
        tokens = model(pixel_values=pixels).last_hidden_state[0, 1:]  # (g*g, C)
    out = []
    for mask in masks:
        small = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=(h, w), mode="area")
        padded = F.pad(small, (0, resolution - w, 0, resolution - h))
        cover = F.avg_pool2d(padded, patch).flatten()  # (g*g,)
        out.append(F.normalize((cover @ tokens) / cover.sum(), dim=0))
    return torch.stack(out)


def test_pooled_vectors_match_a_direct_reference(tiny, shapes):
    for image in shapes.images[:3]:
        rgb = read_rgb(image.path)
        masks = np.stack([obj.mask for obj in image.objects])
        got, valid = embed_segments(tiny, rgb, masks)
        assert valid.all() and got.shape == (len(masks), tiny.spec.dim)
        ref = _reference(tiny.model, tiny.spec.resolution, tiny.spec.patch, rgb, masks)
        cos = (got * ref).sum(dim=1)
        assert cos.min() >= 0.999, cos


def test_parity_holds_on_odd_image_sizes_and_small_masks(tiny):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (207, 301, 3), dtype=np.uint8)
    masks = np.zeros((3, 207, 301), dtype=bool)
    masks[0, 5:40, 7:60] = True
    masks[1, 150:207, 250:301] = True  # touches the bottom-right corner, next to the padding
    masks[2, 100:103, 100:104] = True  # a few pixels: smaller than one patch
    got, valid = embed_segments(tiny, rgb, masks)
    assert valid.all()
    ref = _reference(tiny.model, tiny.spec.resolution, tiny.spec.patch, rgb, masks)
    assert (got * ref).sum(dim=1).min() >= 0.999


def test_empty_masks_are_invalid_and_shapes_are_checked(tiny):
    rgb = np.zeros((50, 70, 3), dtype=np.uint8)
    masks = np.zeros((2, 50, 70), dtype=bool)
    masks[1, 10:20, 10:30] = True
    vectors, valid = embed_segments(tiny, rgb, masks)
    assert valid.tolist() == [False, True]
    assert torch.all(vectors[0] == 0) and abs(float(vectors[1].norm()) - 1) < 1e-5
    assert embed_segments(tiny, rgb, masks[:0])[0].shape == (0, tiny.spec.dim)
    with pytest.raises(SpaceError, match="do not fit"):
        pool_segments(encode_images(tiny, [rgb])[0], np.zeros((1, 49, 70), dtype=bool))


def test_tiny_random_weights_are_deterministic_and_named(tiny):
    spec = get_space(TINY)
    a, b = build_tiny_random(spec).state_dict(), build_tiny_random(spec).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = build_tiny_random(spec, seed=1).state_dict()
    assert not all(torch.equal(a[k], other[k]) for k in a)
    state = torch.random.get_rng_state()
    build_tiny_random(spec)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    assert tiny.space == tiny_random_identity(TINY)
    assert (tiny.space.model, tiny.space.dim, tiny.space.recipe) == (TINY, 64, "maskpool-v1@224")
    rgb = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    mask = np.ones((1, 64, 80), dtype=bool)
    v1 = embed_segments(tiny, rgb, mask)[0]
    v2 = embed_segments(load_space(TINY, device="cpu"), rgb, mask)[0]
    assert torch.equal(v1, v2)


def test_registry_names_and_identities():
    assert {"dinov2-s", "dinov2-b", "dinov2-l", "dinov2-g", TINY} <= set(SPACES)
    assert [SPACES[n].dim for n in ("dinov2-s", "dinov2-b", "dinov2-l", "dinov2-g")] == [384, 768, 1024, 1536]
    assert all(s.resolution % s.patch == 0 for s in SPACES.values())
    with pytest.raises(InputError, match="unknown embedding space 'dinov2-x'"):
        get_space("dinov2-x")
    with pytest.raises(InputError):
        tiny_random_identity("dinov2-b")


def test_offline_without_cached_weights_is_a_one_line_error(tmp_path):
    with pytest.raises(SpaceError) as info:
        load_space("dinov2-b", cache_dir=tmp_path / "empty-cache", offline=True, device="cpu")
    msg = str(info.value)
    assert "\n" not in msg and "--weights DIR" in msg and "facebook/dinov2-base" in msg and "offline" in msg
    with pytest.raises(SpaceError, match="takes no --weights"):
        load_space(TINY, weights=tmp_path)


def test_local_weights_directory(tmp_path):
    """--weights DIR: a Hugging Face-format copy loads without the hub; the identity hashes its file; a
    directory of the wrong width or without weights is refused in one line."""
    good = tmp_path / "small"
    torch.manual_seed(3)
    Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=1, num_attention_heads=6,
                             intermediate_size=256)).save_pretrained(good)
    sm = load_space("dinov2-s", weights=good, device="cpu", offline=True)
    assert sm.space.checkpoint_sha256 == sha256_file(good / "model.safetensors")
    assert (sm.space.dim, sm.space.recipe) == (384, "maskpool-v1@448")
    rgb = np.random.default_rng(2).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    vectors, valid = embed_segments(sm, rgb, np.ones((1, 90, 120), dtype=bool))
    assert valid.all() and vectors.shape == (1, 384)
    with pytest.raises(SpaceError, match="expected dinov2 width 768"):
        load_space("dinov2-b", weights=good, device="cpu")
    with pytest.raises(SpaceError, match="must be a directory holding config.json"):
        load_space("dinov2-b", weights=tmp_path / "nothing", device="cpu")


def test_masks_mode_embeddings_separate_the_synthetic_classes(tiny, shapes):
    """Annotation masks of 40 synthetic images: class centroids from the first half of the images,
    nearest centroid (cosine) labels the objects of the second half."""
    vectors, labels = [], []
    for image in shapes.images:
        masks = np.stack([obj.mask for obj in image.objects])
        v, valid = embed_segments(tiny, read_rgb(image.path), masks)
        assert valid.all()
        vectors.append(v)
        labels.extend(obj.category_id for obj in image.objects)
    half = sum(len(img.objects) for img in shapes.images[:20])
    x, y = torch.cat(vectors), torch.tensor(labels)
    classes = sorted(set(labels[:half]))
    centroids = F.normalize(torch.stack([x[:half][y[:half] == c].mean(0) for c in classes]), dim=1)
    predicted = torch.tensor(classes)[(x[half:] @ centroids.T).argmax(1)]
    accuracy = float((predicted == y[half:]).float().mean())
    print(f"nearest-centroid accuracy on {len(y) - half} held-out objects: {accuracy:.3f}")
    assert accuracy >= 0.9
