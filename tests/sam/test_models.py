import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

from samsearch.sam import models
from samsearch.sam.models import ModelError, load_model, resolve_checkpoint, select_device


def test_tiny_random_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = models.build_tiny_random()
    after = torch.rand(1)
    b = models.build_tiny_random()
    assert torch.equal(after, expected_next)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_tiny_random_is_real_sam_architecture():
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, Sam

    m = load_model("tiny-random", device="cpu")
    assert isinstance(m.sam, Sam)
    assert isinstance(m.sam.image_encoder, ImageEncoderViT) and isinstance(m.sam.mask_decoder, MaskDecoder)
    assert m.sam.image_encoder.img_size == 1024
    assert m.key.startswith("tiny-random:")


@pytest.mark.parametrize(
    "name, kwargs, error",
    [
        ("vit_q", {}, "unknown model 'vit_q'"),
        ("tiny-random", {"checkpoint": "x.pth"}, "tiny-random takes no --checkpoint"),
        ("vit_b", {"checkpoint": "/nonexistent/sam.pth"}, "checkpoint file not found"),
    ],
)
def test_load_model_errors(name, kwargs, error):
    with pytest.raises(ModelError, match=error):
        load_model(name, device="cpu", **kwargs)


def test_bad_checkpoint_file_is_one_line_error(tmp_path):
    bad = tmp_path / "sam.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError) as info:
        load_model("vit_b", checkpoint=bad, device="cpu")
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_weights_only_load_refuses_pickled_code(tmp_path):
    # A checkpoint that would run code on unpickling must be refused by weights_only=True.
    evil = tmp_path / "evil.pth"

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Boom()}, evil)
    with pytest.raises(ModelError, match="not a valid vit_b checkpoint"):
        load_model("vit_b", checkpoint=evil, device="cpu")


def test_local_checkpoint_roundtrip(tmp_path):
    # A vit_b-shaped state dict saved to disk loads through the same path as an official file.
    sam = models.build_sam(models.MODELS["vit_b"])
    path = tmp_path / "vit_b.pth"
    torch.save(sam.state_dict(), path)
    m = load_model("vit_b", checkpoint=path, device="cpu")
    assert m.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.checkpoint_path == path


def test_offline_without_cache_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "CHECKPOINT_BASE_URL", "http://127.0.0.1:9/")
    with pytest.raises(ModelError) as info:
        resolve_checkpoint("vit_b", cache_dir=tmp_path, progress=False)
    msg = str(info.value)
    assert "--checkpoint FILE" in msg and "tiny-random" in msg and "\n" not in msg


def _serve(directory: Path):
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(directory), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def fake_official(tmp_path, monkeypatch):
    """A local HTTP server standing in for the official download host, with a registry entry whose
    hash matches the file it serves."""
    served = tmp_path / "served"
    served.mkdir()
    payload = b"checkpoint-bytes" * 1000
    (served / "sam_test.pth").write_bytes(payload)
    server = _serve(served)
    monkeypatch.setattr(models, "CHECKPOINT_BASE_URL", f"http://127.0.0.1:{server.server_port}/")
    spec = models.ModelSpec("vit_test", 768, 12, 12, (2, 5, 8, 11), "sam_test.pth",
                            hashlib.sha256(payload).hexdigest(), len(payload))
    monkeypatch.setitem(models.MODELS, "vit_test", spec)
    yield served, payload
    server.shutdown()


def test_download_verifies_hash_and_caches(fake_official, tmp_path):
    _, payload = fake_official
    cache = tmp_path / "cache"
    path, sha = resolve_checkpoint("vit_test", cache_dir=cache, progress=False)
    assert path == cache / "sam_test.pth" and path.read_bytes() == payload
    assert sha == hashlib.sha256(payload).hexdigest()
    # second call uses the cache (server content changed, result did not)
    (fake_official[0] / "sam_test.pth").write_bytes(b"changed")
    assert resolve_checkpoint("vit_test", cache_dir=cache, progress=False)[0].read_bytes() == payload


def test_download_with_wrong_hash_keeps_nothing(fake_official, tmp_path, monkeypatch):
    spec = models.MODELS["vit_test"]
    monkeypatch.setitem(models.MODELS, "vit_test", models.ModelSpec(**{**spec.__dict__, "sha256": "0" * 64}))
    cache = tmp_path / "cache"
    with pytest.raises(ModelError, match="expected 0000"):
        resolve_checkpoint("vit_test", cache_dir=cache, progress=False)
    assert list(cache.iterdir()) == []


def test_official_registry_is_complete():
    for name in ("vit_b", "vit_l", "vit_h"):
        spec = models.MODELS[name]
        assert spec.url.startswith("https://dl.fbaipublicfiles.com/segment_anything/sam_")
        assert len(spec.sha256) == 64


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    assert select_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            select_device("cuda")
    with pytest.raises(ModelError, match="invalid device"):
        select_device("tpu9")
