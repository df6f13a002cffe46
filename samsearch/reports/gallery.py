"""Pictures a person can look at: a segment drawn over its image, and self-contained HTML galleries.

Everything here is pure rendering: callers pass image paths (or arrays), COCO RLE masks and captions.
Pages embed every picture as a base64 JPEG, so a gallery opens from disk anywhere, alone.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from samsearch.data.imageio import ImageLoadError, load_image
from samsearch.data.masks import rle_to_mask
from samsearch.errors import InputError
from samsearch.home import Home
from samsearch.search.segments import get_segment

OUTLINE = (255, 48, 48)  # the bright inner ring of a mask's outline
OUTLINE_DARK = (16, 16, 16)  # its dark outer ring, visible on light and red backgrounds alike


@dataclass
class GalleryItem:
    image_path: Path | str
    rle: dict[str, Any]  # COCO RLE of the mask over the original image
    caption: Sequence[str] = ()  # lines under the picture
    title: str | None = None


@dataclass
class GallerySection:
    title: str
    items: list[GalleryItem] = field(default_factory=list)
    note: str | None = None


def mask_outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its border (4-neighbourhood erosion)."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def draw_mask(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the mask's border drawn (a dark outer and a bright inner ring, both inside the mask).
    The segment's own pixels are not tinted: a person naming clusters by colour sees its true colours."""
    out = rgb.copy()
    width = max(1, round(max(rgb.shape[:2]) / 300))
    border = mask_outline(mask, 2 * width)
    inner = border & ~mask_outline(mask, width)
    out[border] = OUTLINE_DARK
    out[inner] = OUTLINE
    return out


def mask_bbox_xyxy(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        return 0, 0, mask.shape[1], mask.shape[0]
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def render_crop(rgb: np.ndarray, mask: np.ndarray, size: int = 192, context: float = 0.25) -> Image.Image:
    """A ``size``×``size`` thumbnail of the segment with some surrounding context, mask outlined."""
    x0, y0, x1, y1 = mask_bbox_xyxy(mask)
    side = max(x1 - x0, y1 - y0)
    side = int(side * (1 + 2 * context)) + 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    h, w = mask.shape
    left = int(max(0, min(w - side, cx - side / 2))) if side < w else 0
    top = int(max(0, min(h - side, cy - side / 2))) if side < h else 0
    crop = draw_mask(rgb[top:top + side, left:left + side], mask[top:top + side, left:left + side])
    pic = Image.fromarray(crop)
    pic.thumbnail((size, size), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), (24, 24, 24))
    canvas.paste(pic, ((size - pic.width) // 2, (size - pic.height) // 2))
    return canvas


def render_segment_image(image_path: Path | str, rle: dict[str, Any], max_side: int | None = None) -> Image.Image:
    """The whole image with the segment outlined (for ``samsearch show``)."""
    rgb = load_image(image_path).rgb
    pic = Image.fromarray(draw_mask(rgb, _mask_for(rle, rgb)))
    if max_side and max(pic.size) > max_side:
        pic.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return pic


# distinct outline colours for many segments on one image
PALETTE = ((255, 99, 71), (60, 179, 113), (65, 105, 225), (255, 215, 0), (238, 130, 238), (0, 206, 209),
           (255, 140, 0), (154, 205, 50), (220, 20, 60), (30, 144, 255))


def render_image_overlay(rgb: np.ndarray, masks: list[np.ndarray], captions: list[str] | None = None,
                         max_side: int | None = None) -> Image.Image:
    """The whole image with every mask outlined in its own colour and, where given, its caption (e.g. the
    label) written at the top left of its box; shrunk to ``max_side`` if larger."""
    from PIL import ImageDraw

    out = rgb.copy()
    width = max(1, round(max(rgb.shape[:2]) / 300))
    boxes = []
    for i, mask in enumerate(masks):
        out[mask_outline(mask, width)] = PALETTE[i % len(PALETTE)]
        boxes.append(mask_bbox_xyxy(mask))
    pic = Image.fromarray(out)
    if captions:
        draw = ImageDraw.Draw(pic)
        for i, (text, (x0, y0, _, _)) in enumerate(zip(captions, boxes, strict=False)):
            if text:
                pos = (x0 + 2, max(0, y0 - 11))
                draw.rectangle(draw.textbbox(pos, text), fill=(0, 0, 0))
                draw.text(pos, text, fill=PALETTE[i % len(PALETTE)])
    if max_side and max(pic.size) > max_side:
        pic.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return pic


def placeholder(text: str, size: int = 192) -> Image.Image:
    pic = Image.new("RGB", (size, size), (60, 60, 60))
    draw = ImageDraw.Draw(pic)
    words, lines, line = text.split(), [], ""
    for word in words:  # crude wrapping for the default bitmap font
        if len(line) + len(word) > 26:
            lines.append(line)
            line = ""
        line = f"{line} {word}".strip()
    lines.append(line)
    for i, ln in enumerate(lines[:10]):
        draw.text((6, 6 + 14 * i), ln, fill=(230, 230, 230))
    return pic


def _mask_for(rle: dict[str, Any], rgb: np.ndarray) -> np.ndarray:
    mask = rle_to_mask(rle)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask {mask.shape[1]}x{mask.shape[0]} does not fit image {rgb.shape[1]}x{rgb.shape[0]}")
    return mask


def _data_uri(pic: Image.Image) -> str:
    buf = io.BytesIO()
    pic.save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Thumbnails:
    """Decodes each source image once per page, however many of its segments are shown."""

    def __init__(self, size: int):
        self.size = size
        self._cache: dict[str, np.ndarray | str] = {}

    def __call__(self, item: GalleryItem) -> Image.Image:
        key = str(item.image_path)
        if key not in self._cache:
            try:
                self._cache[key] = load_image(key).rgb
            except ImageLoadError as exc:
                self._cache[key] = exc.reason
        rgb = self._cache[key]
        if isinstance(rgb, str):
            return placeholder(f"{Path(key).name}: {rgb}", self.size)
        try:
            return render_crop(rgb, _mask_for(item.rle, rgb), self.size)
        except ValueError as exc:
            return placeholder(str(exc), self.size)


PAGE_CSS = """
body{font-family:system-ui,sans-serif;background:#111;color:#ddd;margin:24px}
h1{font-size:20px} h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #333;padding-bottom:4px}
.row{display:flex;flex-wrap:wrap;gap:12px} .note{color:#999;font-size:13px}
figure{margin:0;background:#1c1c1c;padding:6px;border-radius:6px;width:SIZEpx}
figure.query{outline:2px solid #e33}
figure img{display:block;width:SIZEpx;height:SIZEpx}
figcaption{font-size:12px;line-height:1.35;margin-top:4px;word-break:break-all}
figcaption b{color:#fff}
"""


def write_gallery(
    out: Path | str,
    title: str,
    sections: Sequence[GallerySection],
    query: GalleryItem | None = None,
    thumb_size: int = 192,
) -> Path:
    """Write a self-contained HTML page: an optional query picture, then one row per section."""
    out = Path(out)
    thumbs = _Thumbnails(thumb_size)

    def figure(item: GalleryItem, cls: str = "") -> str:
        lines = "".join(f"<div>{html.escape(str(c))}</div>" for c in item.caption)
        head = f"<b>{html.escape(item.title)}</b>" if item.title else ""
        return (f'<figure class="{cls}"><img alt="{html.escape(Path(str(item.image_path)).name)}" '
                f'src="{_data_uri(thumbs(item))}"><figcaption>{head}{lines}</figcaption></figure>')

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{PAGE_CSS.replace('SIZE', str(thumb_size))}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if query is not None:
        parts.append(f"<h2>query</h2><div class='row'>{figure(query, 'query')}</div>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.note:
            parts.append(f"<div class='note'>{html.escape(section.note)}</div>")
        parts.append("<div class='row'>" + "".join(figure(it) for it in section.items) + "</div>")
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(out)
    return out


def render_segment(home: Home, segment_id: str, out: Path | str, max_side: int | None = None) -> Path:
    """Write a PNG of the segment's image with the segment outlined (the image's own size,
    or at most ``max_side`` pixels on its longer side)."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise InputError(f"{out}: --out must name a .png file")
    seg = get_segment(home, segment_id)
    try:
        pic = render_segment_image(seg.image_path, seg.rle, max_side=max_side)
    except ImageLoadError as exc:
        raise InputError(f"segment {segment_id}: cannot read its image {exc}") from None
    except ValueError as exc:  # the stored mask does not fit the file now at that path
        raise InputError(f"segment {segment_id}: {seg.image_path}: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pic.save(tmp, format="PNG")
    tmp.replace(out)
    return out
