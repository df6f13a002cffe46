"""Cost per image of each embedding space next to SAM's image encoder (random weights: no download).

For each model: the image through the backbone once and its masks pooled (DINOv2 spaces: encode_images +
pool_segments at the space's resolution; CLIP spaces: each mask's crop through the image tower, crops of all
images in one batch; SAM: encode_image at 1024 px, what ingest pays anyway). Full-size
architectures get seeded random weights (speed does not depend on the values). Prints ms per image
(median of --reps after one warm-up) and the ratio to the first SAM model listed.

    python scripts/bench_spaces.py --sam tiny-random,vit_b --spaces dinov2-tiny-random,dinov2-s,dinov2-b \
        --images 2 --reps 3 --device cpu
    # on a GPU: --device cuda --bf16 --sam vit_h --spaces dinov2-b,dinov2-l,clip-b32,clip-l14
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Official DINOv2 widths/depths (what the hub's config.json says), for random-weight stand-ins.
DINOV2_ARCH = {"dinov2-s": (384, 12, 6, False), "dinov2-b": (768, 12, 12, False),
               "dinov2-l": (1024, 24, 16, False), "dinov2-g": (1536, 40, 24, True)}
# Official CLIP image towers: (width, layers, heads, patch), text towers (width, layers, heads), projection.
CLIP_ARCH = {"clip-b32": ((768, 12, 12, 32), (512, 12, 8), 512), "clip-b16": ((768, 12, 12, 16), (512, 12, 8), 512),
             "clip-l14": ((1024, 24, 16, 14), (768, 12, 12), 768)}


def space_model(name: str, device: torch.device):
    from transformers import Dinov2Config, Dinov2Model

    from samsearch.spaces.dinov2 import SpaceModel
    from samsearch.spaces.registry import get_space

    if name in CLIP_ARCH:
        return clip_model(name, device)
    if name not in DINOV2_ARCH:
        from samsearch.spaces.models import load_space as load_any

        return load_any(name, device=str(device))
    spec = get_space(name)
    width, layers, heads, swiglu = DINOV2_ARCH[name]
    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                       use_swiglu_ffn=swiglu, image_size=518, patch_size=14)
    return SpaceModel(spec, spec.identity("random"), Dinov2Model(cfg).eval().to(device), device)


def clip_model(name: str, device: torch.device):
    from transformers import CLIPConfig, CLIPModel

    from samsearch.spaces.clip import ClipSpaceModel, tiny_tokenizer_dir
    from samsearch.spaces.registry import get_space

    spec = get_space(name)
    (vw, vl, vh, patch), (tw, tl, th), proj = CLIP_ARCH[name]
    torch.manual_seed(0)
    cfg = CLIPConfig(vision_config=dict(hidden_size=vw, num_hidden_layers=vl, num_attention_heads=vh,
                                        intermediate_size=4 * vw, patch_size=patch, image_size=spec.resolution),
                     text_config=dict(hidden_size=tw, num_hidden_layers=tl, num_attention_heads=th,
                                      intermediate_size=4 * tw), projection_dim=proj)
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = CLIPTokenizer.from_pretrained(str(tiny_tokenizer_dir(Path(tmp))))
    return ClipSpaceModel(spec, spec.identity("random"), CLIPModel(cfg).eval().to(device), device, tok)


def timed(fn, reps: int, device: torch.device) -> float:
    fn()  # warm-up
    out = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sam", default="tiny-random", help="SAM models, comma-separated")
    ap.add_argument("--spaces", default="dinov2-tiny-random", help="spaces, comma-separated")
    ap.add_argument("--images", type=int, default=2, help="images per timed call (synthetic 640x480)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="autocast the backbones to bfloat16 (GPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from samsearch.data.synthetic import make_dataset
    from samsearch.sam.encoder import encode_images as sam_encode
    from samsearch.sam.models import MODELS, build_sam
    from samsearch.spaces.models import embed_images

    device = torch.device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        ds = make_dataset(Path(tmp), n_images=a.images, seed=0, size=(640, 480))
        rgbs = [np.asarray(Image.open(im.path).convert("RGB")) for im in ds.images]
    masks = [np.stack([np.zeros(r.shape[:2], bool)] * 4) for r in rgbs]
    for m in masks:
        for j in range(4):
            m[j, 40 * j:40 * j + 120, 60 * j:60 * j + 200] = True
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if a.bf16 else nullcontext
    rows = []
    for name in [n for n in a.sam.split(",") if n]:
        torch.manual_seed(0)
        sam = build_sam(MODELS[name]).eval().to(device)

        def run_sam(sam=sam):
            with torch.no_grad(), amp():
                sam_encode(sam, rgbs, batch_size=len(rgbs))

        rows.append((f"SAM {name} encoder", timed(run_sam, a.reps, device) / len(rgbs)))
        del sam
    for name in [n for n in a.spaces.split(",") if n]:
        sm = space_model(name, device)

        def run_space(sm=sm):
            with amp():
                embed_images(sm, rgbs, masks, batch_size=len(rgbs))

        what = "crops" if sm.spec.family == "clip" else "encode+pool"
        rows.append((f"{name} {what}", timed(run_space, a.reps, device) / len(rgbs)))
        del sm
    base = rows[0][1]
    print(f"device={device} bf16={a.bf16} images={a.images} reps={a.reps} threads={torch.get_num_threads()}")
    for label, sec in rows:
        print(f"{label:<32} {1000 * sec:10.1f} ms/img {1 / sec:8.2f} img/s {sec / base:8.3f}x")


if __name__ == "__main__":
    main()
