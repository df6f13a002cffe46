import re

import numpy as np
from PIL import Image

from samsearch.data.masks import mask_to_rle
from samsearch.reports.gallery import GalleryItem, GallerySection, draw_mask, mask_outline, render_crop, write_gallery


def test_outline_is_the_border_only():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:8, 2:8] = True
    ring = mask_outline(mask, 1)
    assert ring.sum() == 6 * 4 - 4 and not ring[4, 4] and ring[2, 2] and not ring[0, 0]


def test_draw_mask_outlines_the_mask_and_keeps_its_colours():
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[..., 1:] = 200  # cyan: a tint would turn it pinkish, which misleads whoever names clusters by colour
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:15, 5:25] = True
    out = draw_mask(rgb, mask)
    border = mask_outline(mask, 2)
    assert np.array_equal(out[~mask], rgb[~mask])  # outside: untouched
    assert np.array_equal(out[mask & ~border], rgb[mask & ~border])  # inside the border: the true colours
    assert (out[border] != rgb[border]).any(axis=1).all()  # the border is drawn


def test_crop_is_square_and_centred_on_the_segment():
    rgb = np.zeros((200, 300, 3), dtype=np.uint8)
    mask = np.zeros((200, 300), dtype=bool)
    mask[150:190, 250:290] = True
    pic = render_crop(rgb, mask, size=64)
    assert pic.size == (64, 64)
    arr = np.asarray(pic)
    assert (arr[..., 0] > 100).sum() > 50  # the outlined segment is visible


def test_gallery_is_self_contained(tmp_path):
    img = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (10, 200, 10)).save(img)
    mask = np.zeros((48, 64), dtype=bool)
    mask[10:30, 10:40] = True
    good = GalleryItem(img, mask_to_rle(mask), ["score 0.93", "<b>esc</b>"], title="#1")
    missing = GalleryItem(tmp_path / "gone.png", mask_to_rle(mask), ["missing file"])
    page = write_gallery(tmp_path / "g.html", "hits", [GallerySection("results", [good, missing])], query=good)
    text = page.read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/jpeg;base64,', text)) == 3
    assert "&lt;b&gt;esc&lt;/b&gt;" in text and "<b>esc</b>" not in text
    assert not re.search(r'src="(?!data:)', text)  # nothing refers to files outside the page
