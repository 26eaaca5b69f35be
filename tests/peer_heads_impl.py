"""Independent implementations of the compared heads, for tests: plain torch functions over the feature map and
the weights as tensors, written from the papers and the facts of each public code (its shapes, layouts, order of
operations), in those codes' own shape conventions rather than msrn's (channels-first Conv1d maths for ADD-GCN,
sequence-first attention for the transformers, loops where the public code loops).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mlgcn_logits(fmap: torch.Tensor, inp: torch.Tensor, a: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor):
    """ML-GCN: adj = (A D)^T D with D = diag(rowsum^-1/2); two GCN layers (support = X W, out = adj support)
    with LeakyReLU 0.2 between; logits = maxpool(X) @ W^T."""
    d = torch.diag(torch.pow(a.sum(1), -0.5))
    adj = torch.matmul(torch.matmul(a, d).t(), d)
    x = torch.matmul(adj, torch.matmul(inp, w1))
    x = F.leaky_relu(x, 0.2)
    x = torch.matmul(adj, torch.matmul(x, w2))  # C x d
    pooled = F.max_pool2d(fmap, fmap.shape[2:]).flatten(1)  # B x d
    return torch.matmul(pooled, x.transpose(0, 1))


def csra_logits(fmap: torch.Tensor, weights: list[torch.Tensor], temperatures: list[float], lam: float):
    """CSRA: per head, score = conv(x) / ||w_c|| (weights C x d x 1 x 1), base = mean, attention = sum(score *
    softmax(T score)) or max for T = 99 (the public code's sentinel for infinity); heads summed."""
    total = 0.0
    for w, t in zip(weights, temperatures, strict=True):
        score = F.conv2d(fmap, w) / torch.norm(w, dim=1, keepdim=True).transpose(0, 1)  # B x C x h x w
        score = score.flatten(2)
        base = torch.mean(score, dim=2)
        if t == 99:
            att = torch.max(score, dim=2)[0]
        else:
            att = torch.sum(score * torch.exp(t * score) / torch.exp(t * score).sum(2, keepdim=True), dim=2)
        total = total + base + lam * att
    return total


def multihead_attention(q, k, v, in_w, in_b, out_w, out_b, heads):
    """Sequence-first multi-head attention (L x B x E queries, S x B x E keys/values) with packed input
    projections, as nn.MultiheadAttention's weights hold them; returns (L x B x E, B x L x S mean weights)."""
    e = q.shape[-1]
    wq, wk, wv = in_w.split(e)
    bq, bk, bv = in_b.split(e)
    qh, kh, vh = (F.linear(t, w, b) for t, w, b in ((q, wq, bq), (k, wk, bk), (v, wv, bv)))
    hd = e // heads

    def split(t):  # L x B x E -> B x heads x L x hd
        return t.reshape(t.shape[0], t.shape[1], heads, hd).permute(1, 2, 0, 3)

    scores = torch.matmul(split(qh), split(kh).transpose(-1, -2)) / math.sqrt(hd)
    attn = torch.softmax(scores, dim=-1)  # B x heads x L x S
    out = torch.matmul(attn, split(vh)).permute(2, 0, 1, 3).reshape(q.shape[0], q.shape[1], e)
    return F.linear(out, out_w, out_b), attn.mean(1)


def _mha(p: dict, prefix: str, q, k, v, heads):
    return multihead_attention(
        q,
        k,
        v,
        p[prefix + "in_proj_weight"],
        p[prefix + "in_proj_bias"],
        p[prefix + "out_proj.weight"],
        p[prefix + "out_proj.bias"],
        heads,
    )


def _ln(x, p: dict, prefix: str):
    return F.layer_norm(x, x.shape[-1:], p[prefix + "weight"], p[prefix + "bias"])


def _ffn(x, p: dict, first: str, second: str):
    return F.linear(
        F.relu(F.linear(x, p[first + "weight"], p[first + "bias"])), p[second + "weight"], p[second + "bias"]
    )


def mldecoder_logits(fmap: torch.Tensor, p: dict, num_classes: int, heads: int):
    """ML-Decoder (eval: no dropout), sequence-first as its code: embed + ReLU; tgt = norm1(tgt + tgt);
    cross-attention, norm2; FFN, norm3; GroupFC loops over the groups; out[:, :C] + bias."""
    emb = F.relu(F.linear(fmap.flatten(2).transpose(1, 2), p["embed.weight"], p["embed.bias"]))  # B x hw x D
    bs = emb.shape[0]
    tgt = p["queries"].unsqueeze(1).expand(-1, bs, -1)  # K x B x D
    memory = emb.transpose(0, 1)  # hw x B x D
    tgt = _ln(tgt + tgt, p, "norm1.")
    tgt2, _ = _mha(p, "cross.", tgt, memory, memory, heads)
    tgt = _ln(tgt + tgt2, p, "norm2.")
    tgt = _ln(tgt + _ffn(tgt, p, "ffn1.", "ffn2."), p, "norm3.")
    h = tgt.transpose(0, 1)  # B x K x D
    pool = p["group_fc"]  # K x D x F
    out = torch.zeros(h.shape[0], h.shape[1], pool.shape[2])
    for i in range(h.shape[1]):
        out[:, i, :] = torch.matmul(h[:, i, :], pool[i, :, :])
    return out.flatten(1)[:, :num_classes] + p["group_bias"]


def sine_embedding(h: int, w: int, num_pos_feats: int) -> torch.Tensor:
    """DETR's normalised PositionEmbeddingSine for an unmasked h x w map: num_pos_feats x 2 channels, h x w."""
    not_mask = torch.ones(1, h, w)
    y_embed = not_mask.cumsum(1, dtype=torch.float32)
    x_embed = not_mask.cumsum(2, dtype=torch.float32)
    eps, scale = 1e-6, 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
    dim_t = 10000 ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)[0]  # 2F x h x w


def q2l_logits(fmap: torch.Tensor, p: dict, heads: int, enc: int, dec: int):
    """Query2Label (eval) over Query2Label's own state-dict names, sequence-first as DETR: src + pos through
    post-norm encoder layers; tgt = 0 and the label queries as query_pos through decoder layers whose
    self-attention (and norm1) is removed, so cross-attention is followed by norm2 and the FFN by norm3; the
    decoder's final norm; then the group-wise linear (W * hs).sum(-1) + b, W: 1 x C x D."""
    src = fmap.flatten(2).permute(2, 0, 1)  # hw x B x D (input_proj is the identity)
    pos = sine_embedding(fmap.shape[2], fmap.shape[3], fmap.shape[1] // 2).flatten(1).t()[:, None]  # hw x 1 x D
    for n in range(enc):
        pre = f"transformer.encoder.layers.{n}."
        q = src + pos
        src2, _ = _mha(p, pre + "self_attn.", q, q, src, heads)
        src = _ln(src + src2, p, pre + "norm1.")
        src = _ln(src + _ffn(src, p, pre + "linear1.", pre + "linear2."), p, pre + "norm2.")
    query = p["query_embed.weight"][:, None].repeat(1, src.shape[1], 1)  # C x B x D
    tgt = torch.zeros_like(query)
    for n in range(dec):
        pre = f"transformer.decoder.layers.{n}."
        tgt2, _ = _mha(p, pre + "multihead_attn.", tgt + query, src + pos, src, heads)
        tgt = _ln(tgt + tgt2, p, pre + "norm2.")
        tgt = _ln(tgt + _ffn(tgt, p, pre + "linear1.", pre + "linear2."), p, pre + "norm3.")
    hs = _ln(tgt, p, "transformer.decoder.norm.").transpose(0, 1)  # B x C x D
    return (p["fc.W"] * hs).sum(-1) + p["fc.b"]


def addgcn_logits(fmap: torch.Tensor, p: dict, training: bool = False):
    """ADD-GCN in its own layout (B x channels x nodes, 1x1 Conv1d as weight[..., None]); the final score is
    (out1 + out2) / 2 as its trainer fuses them; out2 reads the diagonal through the identity mask_mat."""

    def conv1d(x, w, b=None):
        return F.conv1d(x, w[..., None], b)

    def lrelu(x):
        return F.leaky_relu(x, 0.2)

    sam = F.conv2d(fmap, p["sam.weight"])
    out1 = sam.view(sam.size(0), sam.size(1), -1).topk(1, dim=-1)[0].mean(dim=-1)
    mask = torch.sigmoid(sam.view(sam.size(0), sam.size(1), -1)).transpose(1, 2)  # B x hw x C
    x = F.conv2d(fmap, p["transform.weight"], p["transform.bias"])
    v = torch.matmul(x.view(x.size(0), x.size(1), -1), mask)  # B x d' x C
    # D-GCN
    static = lrelu(conv1d(v.transpose(1, 2), p["static_adj.weight"]))
    static = lrelu(conv1d(static.transpose(1, 2), p["static_weight.weight"], p["static_weight.bias"]))
    x = v + static
    glb = conv1d(x.mean(2, keepdim=True), p["global_fc.weight"], p["global_fc.bias"])
    glb = F.batch_norm(
        glb, p["global_bn.running_mean"], p["global_bn.running_var"], p["global_bn.weight"], p["global_bn.bias"],
        training=training,
    )  # fmt: skip
    glb = lrelu(glb).expand(-1, -1, x.size(2))
    dyn = torch.sigmoid(conv1d(torch.cat((glb, x), dim=1), p["adj_fc.weight"], p["adj_fc.bias"]))  # B x C x C
    z = lrelu(conv1d(lrelu(torch.matmul(x, dyn)), p["dynamic_weight.weight"], p["dynamic_weight.bias"]))
    z = v + z
    out2 = conv1d(z, p["last.weight"], p["last.bias"])  # B x C x C
    out2 = (out2 * torch.eye(out2.shape[1])).sum(-1)
    return (out1 + out2) / 2
