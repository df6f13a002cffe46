"""CLIP spaces on real transformers modules: tiny-random weights (the real CLIPModel, seeded) and a generated
byte-level BPE tokenizer, crop and text vectors against a direct reference from CLIPModel's own outputs,
local and offline weight loading, and the generic space entry points."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from samsearch.data.synthetic import make_dataset
from samsearch.errors import InputError
from samsearch.sam.models import sha256_file
from samsearch.spaces import clip
from samsearch.spaces.models import embed_images, embed_segments, embed_texts, load_space
from samsearch.spaces.registry import CLIP_MEAN, CLIP_STD, SPACES, SpaceError, get_space, tiny_random_identity

TINY = "clip-tiny-random"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_space(TINY, device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("shapes"), n_images=6, seed=7)


def read_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _reference_pixels(rgb: np.ndarray, mask: np.ndarray, resolution: int) -> torch.Tensor:
    """The crop recipe written out plainly: tight box, mean colour outside the mask, centred square, bicubic
    resize, CLIP's mean/std."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    fill = np.round(np.array(CLIP_MEAN) * 255).astype(np.uint8)
    crop = np.where(mask[y0:y1, x0:x1, None], rgb[y0:y1, x0:x1], fill)
    h, w = crop.shape[:2]
    side = max(h, w)
    square = np.tile(fill, (side, side, 1))
    square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = crop
    small = np.asarray(Image.fromarray(square.astype(np.uint8)).resize((resolution, resolution), Image.BICUBIC))
    x = (small.astype(np.float32) / 255.0 - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)


def _reference(sm, rgb: np.ndarray, masks: np.ndarray, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIPModel's forward on the reference crops and each text tokenized alone (no padding):
    its ``image_embeds`` and ``text_embeds`` (projected and normalised by the library)."""
    pixels = torch.stack([_reference_pixels(rgb, m, sm.spec.resolution) for m in masks])
    image_embeds, text_embeds = [], []
    with torch.no_grad():
        for t in texts:
            ids = sm.tokenizer(t, return_tensors="pt")["input_ids"]
            out = sm.model(input_ids=ids, pixel_values=pixels)
            text_embeds.append(out.text_embeds[0])
            image_embeds = out.image_embeds
    return image_embeds, torch.stack(text_embeds)


def test_crop_and_text_vectors_match_a_direct_reference(tiny, shapes):
    texts = ["a red disc", "A photo of a green TRIANGLE!", "something the vocabulary never saw: żółw 🐢"]
    for image in shapes.images[:3]:
        rgb = read_rgb(image.path)
        masks = np.stack([obj.mask for obj in image.objects])
        got, valid = embed_segments(tiny, rgb, masks)
        assert valid.all() and got.shape == (len(masks), tiny.spec.dim)
        ref_img, ref_txt = _reference(tiny, rgb, masks, texts)
        assert (got * ref_img).sum(dim=1).min() >= 0.999
        txt = embed_texts(tiny, texts)  # one padded batch
        assert txt.shape == (3, tiny.spec.dim) and (txt * ref_txt).sum(dim=1).min() >= 0.999


def test_odd_sizes_thin_and_edge_masks_and_empty_ones(tiny):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (207, 301, 3), dtype=np.uint8)
    masks = np.zeros((4, 207, 301), dtype=bool)
    masks[0, 5:40, 7:60] = True
    masks[1, 150:207, 250:301] = True  # the bottom-right corner
    masks[2, 100:101, 20:280] = True  # one pixel tall
    got, valid = embed_segments(tiny, rgb, masks)
    assert valid.tolist() == [True, True, True, False] and torch.all(got[3] == 0)
    ref, _ = _reference(tiny, rgb, masks[:3], ["x"])
    assert (got[:3] * ref).sum(dim=1).min() >= 0.999
    with pytest.raises(SpaceError, match="do not fit"):
        embed_segments(tiny, rgb, masks[:, :-1])
    assert embed_segments(tiny, rgb, masks[:0])[0].shape == (0, tiny.spec.dim)


def test_crops_batched_across_images_equal_one_image_at_a_time(tiny, shapes):
    rgbs = [read_rgb(im.path) for im in shapes.images[:4]]
    masks = [np.stack([obj.mask for obj in im.objects]) for im in shapes.images[:4]]
    together = embed_images(tiny, rgbs, masks)
    for (v, ok), rgb, m in zip(together, rgbs, masks, strict=True):
        alone, ok2 = embed_segments(tiny, rgb, m)
        assert torch.equal(ok, ok2) and torch.allclose(v, alone, atol=1e-5)


def test_outside_the_mask_does_not_matter_inside_does(tiny):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
    mask = np.zeros((1, 80, 80), dtype=bool)
    mask[0, 20:60, 30:50] = True
    other = rgb.copy()
    other[~mask[0]] = 0  # the background changes
    a, b = embed_segments(tiny, rgb, mask)[0], embed_segments(tiny, other, mask)[0]
    assert torch.allclose(a, b, atol=1e-6)
    other[mask[0]] = 255 - other[mask[0]]
    assert float((a * embed_segments(tiny, other, mask)[0]).sum()) < 0.999


def test_tiny_random_is_deterministic_and_named(tiny, tmp_path):
    assert tiny.space == tiny_random_identity(TINY)
    assert (tiny.space.model, tiny.space.dim, tiny.space.recipe) == (TINY, 32, "maskcrop-v1@64")
    again = load_space(TINY, device="cpu", cache_dir=tmp_path)  # tokenizer written anew elsewhere
    a, b = tiny.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(embed_texts(tiny, ["a red car"]), embed_texts(again, ["a red car"]))
    files = {p.name: p.read_bytes() for p in (tmp_path / "tokenizers" / TINY).iterdir()}
    assert set(files) == {"vocab.json", "merges.txt"}
    clip.tiny_tokenizer_dir(tmp_path)  # idempotent: same bytes
    assert files == {p.name: p.read_bytes() for p in (tmp_path / "tokenizers" / TINY).iterdir()}
    vocab = json.loads(files["vocab.json"])
    assert len(vocab) == len(tiny.tokenizer) and vocab["<|endoftext|>"] == len(vocab) - 1
    tokens = tiny.tokenizer.tokenize("A Photo of a red car")
    assert tokens == ["a</w>", "photo</w>", "of</w>", "a</w>", "red</w>", "car</w>"]  # lower-cased BPE words
    state = torch.random.get_rng_state()
    clip.build_tiny_random(get_space(TINY), tiny.tokenizer)
    assert torch.equal(state, torch.random.get_rng_state())


def test_text_inputs_are_checked(tiny):
    for bad in ("", "   "):
        with pytest.raises(InputError, match="empty"):
            embed_texts(tiny, [bad])
    with pytest.raises(InputError, match="at most 1000"):
        embed_texts(tiny, ["a" * 1001])
    long = embed_texts(tiny, ["red " * 200])  # 200 words: truncated to the tower's 77 tokens
    assert long.shape == (1, 32) and torch.isfinite(long).all()
    dino = load_space("dinov2-tiny-random", device="cpu")
    with pytest.raises(InputError, match="no text tower"):
        embed_texts(dino, ["a red car"])


def test_registry_names():
    assert {"clip-b32", "clip-b16", "clip-l14", TINY} <= set(SPACES)
    assert [SPACES[n].dim for n in ("clip-b32", "clip-b16", "clip-l14")] == [512, 512, 768]
    b32 = SPACES["clip-b32"]
    assert b32.hf_repo == "openai/clip-vit-base-patch32" and b32.recipe == "maskcrop-v1@224"
    assert all(SPACES[n].text for n in ("clip-b32", TINY)) and not SPACES["dinov2-b"].text


def test_offline_without_cached_weights_is_a_one_line_error(tmp_path):
    with pytest.raises(SpaceError) as info:
        load_space("clip-b32", cache_dir=tmp_path / "empty-cache", offline=True, device="cpu")
    msg = str(info.value)
    assert "\n" not in msg and "--weights DIR" in msg and "openai/clip-vit-base-patch32" in msg
    assert "offline" in msg and "vocab.json" in msg
    with pytest.raises(SpaceError, match="takes no --weights"):
        load_space(TINY, weights=tmp_path)


def test_local_weights_directory(tmp_path, tiny):
    """--weights DIR: a hub-format copy (weights, config, tokenizer files) loads without the hub; the identity
    hashes its weights file; a copy without the tokenizer or of another shape is refused in one line."""
    good = tmp_path / "b32"
    cfg = CLIPConfig(text_config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=128, vocab_size=len(tiny.tokenizer)),
                     vision_config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=128, image_size=224, patch_size=32),
                     projection_dim=512)
    torch.manual_seed(3)
    CLIPModel(cfg).save_pretrained(good)
    no_tokenizer = tmp_path / "no-tok"
    CLIPModel(cfg).save_pretrained(no_tokenizer)
    with pytest.raises(SpaceError, match="tokenizer"):
        load_space("clip-b32", weights=no_tokenizer, device="cpu")
    tiny.tokenizer.save_pretrained(good)
    assert isinstance(CLIPTokenizer.from_pretrained(good), CLIPTokenizer)
    sm = load_space("clip-b32", weights=good, device="cpu", offline=True)
    assert sm.space.checkpoint_sha256 == sha256_file(good / "model.safetensors")
    assert (sm.space.dim, sm.space.recipe) == (512, "maskcrop-v1@224")
    rgb = np.random.default_rng(2).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    vectors, valid = embed_segments(sm, rgb, np.ones((1, 90, 120), dtype=bool))
    assert valid.all() and vectors.shape == (1, 512) and embed_texts(sm, ["a cat"]).shape == (1, 512)
    with pytest.raises(SpaceError, match="expected clip projection 768"):
        load_space("clip-l14", weights=good, device="cpu")
