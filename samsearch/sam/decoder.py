"""SAM's mask decoder for many prompts on one image, without repeating the image once per prompt.

``segment_anything``'s ``MaskDecoder`` copies the 64×64×256 image embedding (and its positional encoding)
once per prompt and then runs every image-side projection per prompt, although in the first two-way block
the image side does not depend on the prompt at all. :class:`PromptDecoder` computes the same function
from the same weights (it reads them from the ``Sam`` module; nothing is copied or patched) with:

* the prompt-independent work done once per image: the first block's token→image keys and values and its
  image→token queries, and the positional-encoding part of every later image-side projection;
* the later blocks' three image-side projections as one matrix product per prompt;
* image→token attention with the output projection folded into the (tiny) per-prompt values, so the
  ``(M, 128)`` head outputs are never materialised;
* fused scaled-dot-product attention where prompts attend to the image;
* the output upscaling (two stride-2 transposed convolutions, LayerNorm2d, GELU) as per-pixel matrix
  products whose pixel shuffle is applied once, to the final three logit maps, not to 32 channels;
* the IoU head evaluated before the upscaling, so prompts whose masks are all rejected by the predicted-IoU
  threshold are never upscaled (the masks they would have given are filtered out anyway);
* the per-prompt work done a few prompts at a time (``group``) so the working set stays in cache on CPUs;
* no host synchronisation per group: with an IoU threshold, the pass/fail matrix of all prompts of a call
  comes to the host once, after the transformer has run for all of them.

The result equals ``MaskDecoder`` up to float rounding (≈1e-5 on the logits); the tests compare them.
Only prompts without a mask input are supported (points and/or boxes), which is what ingest uses.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock


@dataclass
class DecodedPrompts:
    """Decoder output for N prompts: IoU predictions for all, low-res logits for the selected ones."""

    iou: torch.Tensor  # (N, k) predicted IoU of the k masks per prompt
    index: torch.Tensor  # (P,) long: the prompts whose logits were computed
    low_res: torch.Tensor  # (P, k, 256, 256) low-resolution mask logits of those prompts
    # With an IoU threshold: (N, k) bool on the host, which masks passed it (``index`` = rows with any).
    passing: np.ndarray | None = None


def default_group(device: torch.device) -> int:
    """Prompts per decoder step: a few on CPU (cache-sized working set), many on accelerators."""
    return 4 if device.type == "cpu" else 64


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """(..., L, n*d) → (..., n, L, d)."""
    *lead, length, c = x.shape
    return x.reshape(*lead, length, n, c // n).transpose(-3, -2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(..., n, L, d) → (..., L, n*d)."""
    *lead, n, length, d = x.shape
    return x.transpose(-3, -2).reshape(*lead, length, n * d)


def _per_head_products(r: torch.Tensor, table_t: torch.Tensor) -> torch.Tensor:
    """r (G, H, T, d) · table_t (H, d, M) per head → (G, H·T, M)."""
    g, n, t, d = r.shape
    out = torch.bmm(r.transpose(0, 1).reshape(n, g * t, d), table_t)  # (H, G·T, M)
    return out.view(n, g, t, -1).transpose(0, 1).reshape(g, n * t, -1)


class _ImageSide:
    """Per-image constants of one attention layer whose image-side projection is ``X W + (PE W + b)``:
    the projection weight per head and the PE part, both transposed for products with the prompt side."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, kpe: torch.Tensor, n: int, scale: float = 1.0):
        di, c = weight.shape
        self.w = (weight * scale).view(n, di // n, c)  # (H, d, C)
        pe_part = F.linear(kpe, weight, bias) * scale  # (M, di)
        self.pe_t = pe_part.T.reshape(n, di // n, -1).contiguous()  # (H, d, M)


class PromptDecoder:
    """The mask decoder bound to one encoded image; call :meth:`decode` with batches of prompts."""

    def __init__(self, sam: Sam, features: torch.Tensor, group: int | None = None,
                 upscale_step: int | None = None):
        dec = sam.mask_decoder
        tr = dec.transformer
        self.dec = dec
        self.tr = tr
        n = self.n_heads = tr.num_heads
        self.group = group or default_group(features.device)
        # Prompts per upscaling step: one on CPU (its activations stay in cache), 16 elsewhere.
        self.upscale_step = upscale_step or (1 if features.device.type == "cpu" else 16)
        self.timings = {"transformer": 0.0, "upscale": 0.0}  # host-side seconds (not synchronised on GPU)
        pe = sam.prompt_encoder.get_dense_pe().to(features.dtype)
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).to(features.dtype)
        _, c, h, w = features.shape
        self.grid = (h, w)
        # Image tokens (M, C): embedding + the "no mask" dense prompt, and their positional encoding.
        self.keys0 = (features + dense)[0].flatten(1).T.contiguous()
        kpe = pe[0].flatten(1).T.contiguous()
        keys_pe = self.keys0 + kpe
        first: TwoWayAttentionBlock = tr.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        # First block: the image side is the same for every prompt, so its projections are computed once.
        self.k1 = _heads(F.linear(keys_pe, t2i.k_proj.weight, t2i.k_proj.bias), n).contiguous()  # (H, M, d)
        self.v1 = _heads(F.linear(self.keys0, t2i.v_proj.weight, t2i.v_proj.bias), n).contiguous()
        scale = 1 / math.sqrt(i2t.internal_dim // n)
        q1 = F.linear(keys_pe, i2t.q_proj.weight, i2t.q_proj.bias) * scale  # (M, di), pre-scaled
        self.q1_t = q1.T.reshape(n, -1, q1.shape[0]).contiguous()  # (H, d, M)
        # Later blocks: per-prompt image projections are folded into the prompt side (see _tokens_to_image
        # and _image_to_tokens); only weights and PE parts are kept.
        self.t2i_sides: dict[int, _ImageSide] = {}
        self.i2t_sides: dict[int, _ImageSide] = {}
        for layer in tr.layers[1:]:
            a, b = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
            self.t2i_sides[id(a)] = _ImageSide(a.k_proj.weight, a.k_proj.bias, kpe, n)
            self.i2t_sides[id(b)] = _ImageSide(b.q_proj.weight, b.q_proj.bias, kpe, n,
                                               1 / math.sqrt(b.internal_dim // n))
        fin = tr.final_attn_token_to_image
        self.t2i_sides[id(fin)] = _ImageSide(fin.k_proj.weight, fin.k_proj.bias, kpe, n)
        # Output upscaling as per-pixel products: conv-transpose weight (in, out, 2, 2) → (in, 2·2·out).
        up = dec.output_upscaling
        conv1, self.ln, conv2 = up[0], up[1], up[3]
        self.act1, self.act2 = up[2], up[4]
        self.c1, self.c2 = conv1.out_channels, conv2.out_channels
        self.up1_w = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, 4 * self.c1).contiguous()
        self.up1_b = conv1.bias.repeat(4)
        # The second one transposed, (2·2·out, in), so its output is channel-major for the hypernetwork.
        self.up2_wt = conv2.weight.permute(2, 3, 1, 0).reshape(4 * self.c2, conv2.in_channels).contiguous()
        self.up2_bt = conv2.bias.repeat(4)[:, None]

    # -- attention with the image side folded into the prompt side -------------------------------
    def _tokens_to_image(self, attn: Attention, queries: torch.Tensor, tokens: torch.Tensor,
                         keys: torch.Tensor) -> torch.Tensor:
        """Prompt tokens attending to per-prompt image tokens ``keys`` (G, M, C), without projecting them:
        qᵀ(X W_k + K_pe) = (W_kᵀ q)ᵀ X + qᵀ K_pe, and Σ_m a_m (X_m W_v + b_v) = (Σ_m a_m X_m) W_v + b_v."""
        side = self.t2i_sides[id(attn)]
        n = self.n_heads
        q = _heads(F.linear(queries + tokens, attn.q_proj.weight, attn.q_proj.bias), n)  # (G, H, T, d)
        g, _, t, d = q.shape
        q = q * (1 / math.sqrt(d))
        r = torch.einsum("ghtj,hjc->ghtc", q, side.w).reshape(g, n * t, -1)  # (G, H·T, C)
        logits = torch.baddbmm(_per_head_products(q, side.pe_t), r, keys.transpose(1, 2))  # (G, H·T, M)
        weights = torch.softmax(logits, dim=-1)
        pooled = torch.bmm(weights, keys).view(g, n, t, -1)  # (G, H, T, C): attention-weighted image tokens
        w_v = attn.v_proj.weight.view(n, d, -1)
        out = torch.einsum("ghtc,hjc->gthj", pooled, w_v).reshape(g, t, n * d) + attn.v_proj.bias
        return attn.out_proj(out)

    def _image_to_tokens(self, attn: Attention, queries: torch.Tensor, tokens: torch.Tensor,
                         keys: torch.Tensor | None) -> torch.Tensor:
        """Image tokens attending to the prompt tokens. ``keys`` (G, M, C) per prompt, or None in the first
        block, whose image queries are shared. The output projection is applied to the T per-prompt values
        first: out_m = Σ_h Σ_t a_mht (v_ht W_o,h) + b_o, so the (M, 128) head outputs never exist."""
        n = self.n_heads
        k = _heads(F.linear(queries + tokens, attn.k_proj.weight, attn.k_proj.bias), n)  # (G, H, T, d)
        v = _heads(F.linear(queries, attn.v_proj.weight, attn.v_proj.bias), n)
        g, _, t, d = k.shape
        if keys is None:
            logits = _per_head_products(k, self.q1_t)  # (G, H·T, M)
        else:
            side = self.i2t_sides[id(attn)]
            u = torch.einsum("ghtj,hjc->ghtc", k, side.w).reshape(g, n * t, -1)
            logits = torch.baddbmm(_per_head_products(k, side.pe_t), u, keys.transpose(1, 2))
        weights = torch.softmax(logits.view(g, n, t, -1), dim=2).view(g, n * t, -1)  # over the T tokens
        w_out = attn.out_proj.weight.view(-1, n, d).permute(1, 2, 0)  # (H, d, C)
        v_out = torch.einsum("ghtj,hjc->ghtc", v, w_out).reshape(g, n * t, -1)  # (G, H·T, C)
        m, c = weights.shape[-1], v_out.shape[-1]
        return torch.baddbmm(attn.out_proj.bias.expand(g, m, c), weights.transpose(1, 2), v_out)

    def _self_attention(self, layer: TwoWayAttentionBlock, queries: torch.Tensor,
                        tokens: torch.Tensor) -> torch.Tensor:
        if layer.skip_first_layer_pe:
            return layer.norm1(layer.self_attn(q=queries, k=queries, v=queries))
        q = queries + tokens
        return layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))

    def _first_block_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The first block's token side for all prompts at once (its keys are shared)."""
        layer = self.tr.layers[0]
        queries = self._self_attention(layer, tokens, tokens)
        n, t, _ = queries.shape
        attn = layer.cross_attn_token_to_image
        q = _heads(F.linear(queries + tokens, attn.q_proj.weight, attn.q_proj.bias), self.n_heads)
        # Every prompt's queries against the same keys: one fused attention over N·T queries.
        q = q.transpose(0, 1).reshape(1, self.n_heads, n * t, -1)
        out = F.scaled_dot_product_attention(q, self.k1[None], self.v1[None])
        out = out.reshape(self.n_heads, n, t, -1).transpose(0, 1)
        queries = layer.norm2(queries + attn.out_proj(_merge(out)))
        return layer.norm3(queries + layer.mlp(queries))

    def _transformer(self, queries: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From the first block's token side to the final (queries, image tokens) for a group of prompts."""
        first = self.tr.layers[0]
        keys = first.norm4(self.keys0 + self._image_to_tokens(first.cross_attn_image_to_token, queries,
                                                              tokens, None))  # (G, M, C)
        for layer in self.tr.layers[1:]:
            queries = self._self_attention(layer, queries, tokens)
            queries = layer.norm2(queries + self._tokens_to_image(layer.cross_attn_token_to_image, queries,
                                                                  tokens, keys))
            queries = layer.norm3(queries + layer.mlp(queries))
            keys = layer.norm4(keys + self._image_to_tokens(layer.cross_attn_image_to_token, queries, tokens,
                                                            keys))
        out = self._tokens_to_image(self.tr.final_attn_token_to_image, queries, tokens, keys)
        return self.tr.norm_final_attn(queries + out), keys

    def _upscale(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """(P, M, C) image tokens and (P, k, C2) hypernetwork outputs → (P, k, 4h, 4w) low-res logits."""
        p, m, _ = keys.shape
        k = hyper.shape[1]
        h, w = self.grid
        out = torch.empty((p, k, 4 * h, 4 * w), dtype=keys.dtype, device=keys.device)
        step = self.upscale_step
        for i in range(0, p, step):
            chunk = keys[i:i + step]
            n = chunk.shape[0]
            # rows: (prompt, y, x, dy1, dx1) of the first stride-2 output; LayerNorm2d + GELU are per pixel.
            x = torch.addmm(self.up1_b, chunk.reshape(n * m, -1), self.up1_w).view(n * m * 4, self.c1)
            x = self.act1(F.layer_norm(x, (self.c1,), self.ln.weight, self.ln.bias, self.ln.eps))
            # x2: rows (dy2, dx2, channel) of the second stride-2 output, columns the pixels of x.
            x2 = self.act2(torch.baddbmm(self.up2_bt, self.up2_wt.expand(n, -1, -1),
                                         x.view(n, m * 4, self.c1).transpose(1, 2)))
            logits = torch.matmul(hyper[i:i + n, None], x2.view(n, 4, self.c2, m * 4))  # (n, 4, k, 4m)
            # (n, dy2, dx2, k, y, x, dy1, dx1) → (n, k, 4y + 2dy1 + dy2, 4x + 2dx1 + dx2)
            out[i:i + n] = logits.view(n, 2, 2, k, h, w, 2, 2).permute(0, 3, 4, 6, 1, 5, 7, 2).reshape(
                n, k, 4 * h, 4 * w)
        return out

    # -- entry point -------------------------------------------------------------------------------
    def prompts_per_call(self, budget_bytes: int | None = None) -> int:
        """Prompts one :meth:`decode` call with an IoU threshold should take: it keeps every prompt's image
        tokens until the one host transfer that selects the prompts to upscale, so the call's working set is
        about this many × (image tokens + three low-res logit maps). ``budget_bytes``: default 512 MiB on
        CPU; on CUDA a quarter of the free memory."""
        if budget_bytes is None:
            dev = self.keys0.device
            if dev.type == "cuda":
                free, _ = torch.cuda.mem_get_info(dev)
                budget_bytes = free // 4
            else:
                budget_bytes = 512 * 2**20
        m, c = self.keys0.shape
        h, w = self.grid
        per_prompt = (m * c + 3 * 16 * h * w) * self.keys0.element_size()
        return max(1, int(budget_bytes // per_prompt))

    @torch.no_grad()
    def decode(self, sparse: torch.Tensor, multimask: bool = True,
               iou_thresh: float | None = None) -> DecodedPrompts:
        """``sparse``: (N, S, C) prompt-encoder sparse embeddings. Logits are computed for the prompts with
        at least one mask whose predicted IoU is above ``iou_thresh`` (all prompts when None).

        No host synchronisation per group: without a threshold nothing is selected; with one, the
        transformer runs for every group first (its image tokens are kept, see :meth:`prompts_per_call`),
        then the pass/fail matrix of all N prompts comes to the host in one transfer (returned as
        ``passing``) and only the selected prompts are upscaled."""
        dec = self.dec
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(sparse.shape[0], -1, -1).to(sparse.dtype), sparse], dim=1)
        picks = list(range(1, dec.num_mask_tokens)) if multimask else [0]
        k = len(picks)
        h, w = self.grid
        n = tokens.shape[0]
        dev = self.keys0.device
        t0 = time.perf_counter()
        queries = self._first_block_tokens(tokens)
        self.timings["transformer"] += time.perf_counter() - t0
        ious: torch.Tensor | None = None
        lows: torch.Tensor | None = None
        kept_hs: torch.Tensor | None = None
        kept_keys: torch.Tensor | None = None
        for start in range(0, n, self.group):
            sl = slice(start, start + self.group)
            t0 = time.perf_counter()
            hs, keys = self._transformer(queries[sl], tokens[sl])
            iou = dec.iou_prediction_head(hs[:, 0])[:, picks]
            if ious is None:  # buffers in the dtype the (possibly autocast) decoder produces
                ious = torch.empty((n, k), dtype=iou.dtype, device=dev)
                if iou_thresh is None:
                    lows = torch.empty((n, k, 4 * h, 4 * w), dtype=keys.dtype, device=dev)
                else:
                    kept_hs = torch.empty((n, *hs.shape[1:]), dtype=hs.dtype, device=dev)
                    kept_keys = torch.empty((n, *keys.shape[1:]), dtype=keys.dtype, device=dev)
            ious[sl] = iou
            t1 = time.perf_counter()
            self.timings["transformer"] += t1 - t0
            if lows is not None:  # every prompt is upscaled: at once, while its image tokens are hot
                lows[sl] = self._upscale(keys, self._hyper(hs, picks))
                self.timings["upscale"] += time.perf_counter() - t1
            else:
                assert kept_hs is not None and kept_keys is not None
                kept_hs[sl], kept_keys[sl] = hs, keys
        if ious is None:  # no prompts
            return DecodedPrompts(torch.zeros((0, k), device=dev, dtype=self.keys0.dtype),
                                  torch.zeros(0, dtype=torch.long, device=dev),
                                  torch.zeros((0, k, 4 * h, 4 * w), device=dev, dtype=self.keys0.dtype),
                                  None if iou_thresh is None else np.zeros((0, k), dtype=bool))
        if lows is not None:
            return DecodedPrompts(ious, torch.arange(n, device=dev), lows)
        assert kept_hs is not None and kept_keys is not None and iou_thresh is not None
        t1 = time.perf_counter()
        passing = (ious > iou_thresh).cpu().numpy()  # the one host transfer of this call
        selected = np.flatnonzero(passing.any(axis=1))
        index = torch.as_tensor(selected, device=dev)
        lows = torch.empty((len(selected), k, 4 * h, 4 * w), dtype=kept_keys.dtype, device=dev)
        for i in range(0, len(selected), self.group):
            idx = index[i:i + self.group]
            lows[i:i + len(idx)] = self._upscale(kept_keys[idx], self._hyper(kept_hs[idx], picks))
        self.timings["upscale"] += time.perf_counter() - t1
        return DecodedPrompts(ious, index, lows, passing)

    def _hyper(self, hs: torch.Tensor, picks: list[int]) -> torch.Tensor:
        """The hypernetwork outputs (G, k, C2) of the picked mask tokens."""
        mlps = self.dec.output_hypernetworks_mlps
        return torch.stack([mlps[j](hs[:, 1 + j]) for j in picks], dim=1)
