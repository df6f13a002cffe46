"""The fast automatic mask generator waits for the device a fixed number of times, not once per prompt group.

There is no GPU here, so host synchronisations are counted with a CUDA-less stand-in: a TorchFunctionMode
that sees every torch call while ``generate_masks`` runs on CPU and counts the ones that, on a CUDA device,
would make the host wait for the device (a value or data-dependent shape read back: ``item``, ``tolist``,
``cpu``, ``bool``/``int``/``float`` of a tensor, ``nonzero``, boolean-mask indexing, NMS, ...).
"""

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from samsearch.data.imageio import load_image
from samsearch.sam.amg import AmgSettings, generate_masks
from samsearch.sam.encoder import encode_image

# ``numpy`` is not listed: a CUDA tensor needs ``cpu()`` (counted) before it.
_READS = {"item", "tolist", "cpu", "__bool__", "__int__", "__float__", "__index__", "nonzero",
          "argwhere", "unique", "unique_consecutive", "masked_select", "nms"}


def _is_bool_tensor(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype == torch.bool


class HostSyncCounter(TorchFunctionMode):
    """Counts calls that read device results back to the host (by name, in ``self.calls``)."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in _READS:
            self.calls.append(name)
        elif name in ("__getitem__", "__setitem__", "index_put", "index_put_") and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(_is_bool_tensor(i) for i in index):  # output size depends on the mask's contents
                self.calls.append(f"{name}[bool]")
        elif name == "where" and len(args) + len(kwargs) == 1:
            self.calls.append("where(cond)")
        elif name == "repeat_interleave" and len(args) > 1 and isinstance(args[1], torch.Tensor):
            self.calls.append("repeat_interleave(tensor)")
        elif name == "to" and any(str(a) == "cpu" for a in (*args[1:], *kwargs.values())):
            self.calls.append("to(cpu)")
        return func(*args, **kwargs)

    @property
    def count(self) -> int:
        return len(self.calls)


def test_the_counter_sees_the_reads_it_is_meant_to_see():
    x = torch.arange(6.0)
    with HostSyncCounter() as counter:
        _ = x[x > 2]  # boolean mask: 1
        _ = x[torch.tensor([0, 2])]  # index gather: 0
        _ = x.sum().item()  # 1
        _ = bool(x[0] > 1)  # 1
        _ = x.cpu(), torch.nonzero(x)  # 2
        _ = x * 2 + 1  # 0
    assert counter.count == 5, counter.calls


def _syncs(model, enc, exact: bool = False, **kw) -> tuple[int, list[str], int]:
    with HostSyncCounter() as counter:
        gen = generate_masks(model.sam, enc, AmgSettings(**{k: v for k, v in kw.items() if k != "decoder_group"}),
                             exact=exact, decoder_group=kw.get("decoder_group"))
    return counter.count, counter.calls, len(gen)


# thresholds that leave some masks at every step (IoU selection, stability selection, NMS) on tiny-random,
# whose predicted IoUs are about -0.25..0.09 and whose logits are small (hence the small stability offset)
_SOME = dict(pred_iou_thresh=0.03, stability_score_thresh=0.88, stability_score_offset=0.005, box_nms_thresh=0.99)


@pytest.mark.parametrize("thresholds", [_SOME, dict()], ids=["some-survive", "sam-defaults"])
def test_fast_generator_syncs_do_not_grow_with_prompt_groups(tiny_model, shapes, thresholds):
    enc = encode_image(tiny_model.sam, load_image(shapes.images[0].path).rgb)
    # 16 prompts in 4 groups of 4, 64 prompts in 64 groups of 1, 64 prompts in 1 batch or in 8 batches of 8:
    # the reference generator's structure would sync once per batch/group; ours the same few times for all.
    runs = {
        "pps4": _syncs(tiny_model, enc, points_per_side=4, **thresholds),
        "pps8_group1": _syncs(tiny_model, enc, points_per_side=8, decoder_group=1, **thresholds),
        "pps8_batch8": _syncs(tiny_model, enc, points_per_side=8, points_per_batch=8, **thresholds),
        "pps8": _syncs(tiny_model, enc, points_per_side=8, **thresholds),
    }
    counts = {name: count for name, (count, _, _) in runs.items()}
    assert len(set(counts.values())) == 1, {name: calls for name, (_, calls, _) in runs.items()}
    # A handful in total: segment_anything's prompt encoder (7 boolean-mask assignments, once per image: all
    # points are encoded in one call), the IoU pass/fail matrix, the stability selection, NMS.
    assert counts["pps8"] <= 10, runs["pps8"][1]
    if thresholds is _SOME:
        assert runs["pps8"][2] >= 1 and runs["pps4"][2] >= 1  # masks did go through every filter to NMS


def test_exact_generator_syncs_per_batch_for_contrast(tiny_model, shapes):
    # The reference-structured path (SAM's decoder, one call per points_per_batch) syncs per batch: the
    # counter would notice if the fast path did the same.
    enc = encode_image(tiny_model.sam, load_image(shapes.images[0].path).rgb)
    one, _, _ = _syncs(tiny_model, enc, exact=True, points_per_side=4, points_per_batch=16, **_SOME)
    four, _, _ = _syncs(tiny_model, enc, exact=True, points_per_side=4, points_per_batch=4, **_SOME)
    assert four > one


def test_more_decoder_calls_add_a_fixed_number_of_syncs_each(tiny_model, shapes):
    # With a memory budget for 16 prompts per call, 64 prompts take 4 calls: the count grows with calls
    # (memory), never with groups.
    enc = encode_image(tiny_model.sam, load_image(shapes.images[0].path).rgb)
    per_prompt = (64 * 64 * 256 + 3 * 256 * 256) * 4
    s1 = _syncs(tiny_model, enc, points_per_side=8, **_SOME)
    gen_kw = dict(points_per_side=8, **_SOME)
    with HostSyncCounter() as counter:
        small = generate_masks(tiny_model.sam, enc, AmgSettings(**gen_kw), pass_budget=16 * per_prompt)
    assert counter.count - s1[0] == 3 * 2, (counter.calls, s1[1])  # 2 per extra call
    assert len(small) == s1[2]
    assert np.array_equal(small.masks.numpy(), generate_masks(tiny_model.sam, enc, AmgSettings(**gen_kw)).masks.numpy())
