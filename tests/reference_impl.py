"""An independent, literal implementation of the MSRN forward pass (design doc sections 1-6).

It works directly on a state dict in the REFERENCE checkpoint layout (`resnet_101.*`,
`ProjectM.*`, `fc_label`, `label_embed.layers.{0,1}`, `group_embed.layers.0.{embed,assign_mat}`,
`fc1`, `fc2`) and is written with torch.nn.functional only, without importing `msrn.models`,
so that tests can compare the project's model against the specification rather than against
itself. It favours literalness over speed: the GAT builds every [h_i ; h_j] pair explicitly
(pyGAT style) and the label attention materialises the B x N x (C+K) x D tensor.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TAU = 0.4
BN_EPS = 1e-5


# ---------------------------------------------------------------- section 2: the label graph


def reference_adjacency(counts: np.ndarray, nums: np.ndarray, tau: float = TAU) -> np.ndarray:
    """Steps 1-4 of section 2, applied literally to the stored arrays (float64, C x C)."""
    m = np.array(counts, dtype=np.float64)
    n = np.array(nums, dtype=np.float64).reshape(-1)
    c = n.shape[0]
    # 1. P[i, j] = M[i, j] / n[i]
    p = np.empty_like(m)
    for i in range(c):
        p[i, :] = m[i, :] / n[i]
    # 2. binarise at tau
    a = np.where(p >= tau, 1.0, 0.0)
    # 3. re-weight by column sums, add self-loops
    col = a.sum(axis=0)
    for j in range(c):
        a[:, j] = a[:, j] * 0.25 / (col[j] + 1e-6)
    a = a + np.identity(c)
    # 4. A_hat = D^-1/2 A^T D^-1/2, D = diag(row sums of A)
    d_inv_sqrt = np.diag(a.sum(axis=1) ** -0.5)
    return d_inv_sqrt @ a.T @ d_inv_sqrt


# ---------------------------------------------------------------- section 3/4: graph attention


def gat_layer(x: torch.Tensor, w: torch.Tensor, a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pyGAT-style layer with explicit pair concatenation: e[i, j] = LeakyReLU_0.2(a^T [h_i ; h_j])."""
    h = x @ w  # C x out
    c, out = h.shape
    h_i = h.repeat(1, c).view(c * c, out)  # row i*c + j holds h_i
    h_j = h.repeat(c, 1)  # row i*c + j holds h_j
    pairs = torch.cat([h_i, h_j], dim=1).view(c, c, 2 * out)  # [h_i ; h_j]
    e = F.leaky_relu(torch.matmul(pairs, a).squeeze(2), negative_slope=0.2)
    e = torch.where(mask, e, torch.full_like(e, -1e12))
    att = F.softmax(e, dim=1)
    return F.elu(att @ h + h)


def label_semantics(
    sd: dict[str, torch.Tensor], word_vectors: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L: C x D, G: K x D, S: C x K) from the reference-layout weights."""
    x = F.linear(word_vectors, sd["fc_label.weight"], sd["fc_label.bias"])
    x = gat_layer(x, sd["label_embed.layers.0.W"], sd["label_embed.layers.0.a"], mask)
    local = gat_layer(x, sd["label_embed.layers.1.W"], sd["label_embed.layers.1.a"], mask)
    r = F.relu(local)
    z = gat_layer(r, sd["group_embed.layers.0.embed.W"], sd["group_embed.layers.0.embed.a"], mask)
    s = F.softmax(
        gat_layer(r, sd["group_embed.layers.0.assign_mat.W"], sd["group_embed.layers.0.assign_mat.a"], mask), dim=1
    )
    groups = s.t() @ z
    return local, groups, s


def reference_group_loss(local: torch.Tensor, groups: torch.Tensor, assign: torch.Tensor, weight: float = 1e-4):
    """weight * sum_i ||L_i - G_{argmax_k S[i, k]}||_2, one label at a time."""
    total = local.new_zeros(())
    for i in range(local.shape[0]):
        k = int(torch.argmax(assign[i]))
        total = total + torch.sqrt(((local[i] - groups[k]) ** 2).sum())
    return weight * total


# ---------------------------------------------------------------- section 1: the backbone


def _bn(x: torch.Tensor, sd: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[prefix + ".running_mean"],
        sd[prefix + ".running_var"],
        sd[prefix + ".weight"],
        sd[prefix + ".bias"],
        training=False,
        eps=BN_EPS,
    )


def _bottleneck(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str, stride: int) -> torch.Tensor:
    out = F.relu(_bn(F.conv2d(x, sd[p + ".conv1.weight"]), sd, p + ".bn1"))
    out = F.relu(_bn(F.conv2d(out, sd[p + ".conv2.weight"], stride=stride, padding=1), sd, p + ".bn2"))
    out = _bn(F.conv2d(out, sd[p + ".conv3.weight"]), sd, p + ".bn3")
    if p + ".downsample.0.weight" in sd:
        identity = _bn(F.conv2d(x, sd[p + ".downsample.0.weight"], stride=stride), sd, p + ".downsample.1")
    else:
        identity = x
    return F.relu(out + identity)


def _stage(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str, stride: int) -> torch.Tensor:
    blocks = sorted({int(k.split(".")[2]) for k in sd if k.startswith(f"resnet_101.{name}.")})
    assert blocks == list(range(len(blocks))), blocks
    for i in blocks:
        x = _bottleneck(x, sd, f"resnet_101.{name}.{i}", stride if i == 0 else 1)
    return x


def depth_features(sd: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """F_1, F_2, F_3, each B x N_s x D."""
    x = F.conv2d(x, sd["resnet_101.conv1.weight"], stride=2, padding=3)
    x = F.relu(_bn(x, sd, "resnet_101.bn1"))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    x = _stage(x, sd, "layer1", 1)
    c2 = _stage(x, sd, "layer2", 2)
    c3 = _stage(c2, sd, "layer3", 2)
    c4 = _stage(c3, sd, "layer4", 2)
    maps = [
        F.max_pool2d(F.conv2d(c2, sd["resnet_101.conv_buffer1.weight"], sd["resnet_101.conv_buffer1.bias"]), 2, 2),
        F.max_pool2d(F.conv2d(c3, sd["resnet_101.conv_buffer2.weight"], sd["resnet_101.conv_buffer2.bias"]), 2, 2),
        F.max_pool2d(c4, 2, 2),
    ]
    feats = []
    for s, m in enumerate(maps):
        p = F.conv2d(m, sd[f"ProjectM.{s}.weight"], sd[f"ProjectM.{s}.bias"])  # B x D x h x w
        b, d = p.shape[:2]
        feats.append(p.reshape(b, d, -1).permute(0, 2, 1))  # B x N x D
    return feats


# ---------------------------------------------------------------- section 5/6: attention, classifier


def label_guided_attention(feats: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
    """feats B x N x D, sem M x D -> B x M x D; alpha materialised as B x N x M x D."""
    scores = feats[:, :, None, :] * sem[None, None, :, :]
    alpha = F.softmax(scores, dim=1)
    return (alpha * feats[:, :, None, :]).sum(dim=1)


def reference_forward(
    sd: dict[str, torch.Tensor],
    x: torch.Tensor,
    word_vectors,
    counts: np.ndarray,
    nums: np.ndarray,
    tau: float = TAU,
    dtype: torch.dtype = torch.float64,
    return_group_loss: bool = False,
    head: str = "mlp",
):
    """Logits (B x C) of the reference MSRN for images x, from a reference-layout state dict; `head`
    "elementwise" is the reference's commented-out block (W, B) instead of fc1/fc2."""
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    x = x.to(dtype)
    wv = torch.as_tensor(np.asarray(word_vectors, dtype=np.float64), dtype=dtype, device=x.device)
    mask = torch.from_numpy(reference_adjacency(counts, nums, tau) > 0).to(x.device)
    local, groups, assign = label_semantics(sd, wv, mask)
    sem = torch.cat([local, groups], dim=0)  # (C+K) x D: labels, then groups
    per_depth = [label_guided_attention(f, sem) for f in depth_features(sd, x)]
    attended = torch.cat(per_depth, dim=2)  # B x (C+K) x 3D
    if head == "elementwise":
        c = local.shape[0]
        logits = elementwise_logits(attended[:, :c], attended[:, c:], assign, sd["W"], sd["B"])
    else:
        h = torch.tanh(attended).reshape(attended.shape[0], -1)
        h = F.leaky_relu(F.linear(h, sd["fc1.weight"], sd["fc1.bias"]), negative_slope=0.01)
        logits = F.linear(h, sd["fc2.weight"], sd["fc2.bias"])
    if return_group_loss:
        return logits, reference_group_loss(local, groups, assign)
    return logits


def elementwise_logits(
    label_dr: torch.Tensor, group_dr: torch.Tensor, assign: torch.Tensor, w: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """The reference's element-wise block, one label at a time: label c's group feature is
    sum_k assign[c, k] * group_dr[:, k]; logit = sum(W[c] * tanh([label_dr[:, c] ; group feature])) + B[c].
    label_dr B x C x F, group_dr B x K x F, assign C x K, W C x 2F, B C -> B x C."""
    batch, c, _ = label_dr.shape
    out = torch.empty(batch, c, dtype=label_dr.dtype, device=label_dr.device)
    for j in range(c):
        group_feat = sum(assign[j, k] * group_dr[:, k] for k in range(group_dr.shape[1]))  # B x F
        x = torch.tanh(torch.cat([label_dr[:, j], group_feat], dim=1))  # B x 2F
        out[:, j] = (w[j][None] * x).sum(dim=1) + b[j]
    return out


# ---------------------------------------------------------------- random reference checkpoints


def random_reference_state(
    shapes: dict[str, list[int]], seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Random weights in the exact reference layout, scaled so ResNet-101 activations stay tame."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        shape = tuple(shape)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            sd[key] = torch.tensor(7, dtype=torch.long)
        elif leaf == "running_var":
            sd[key] = torch.rand(shape, generator=g, dtype=dtype) + 0.5
        elif leaf == "running_mean":
            sd[key] = 0.1 * torch.randn(shape, generator=g, dtype=dtype)
        elif len(shape) == 1:  # biases, BN affine parameters
            base = 1.0 if (".bn" in key or ".downsample.1." in key) and leaf == "weight" else 0.0
            sd[key] = base + 0.1 * torch.randn(shape, generator=g, dtype=dtype)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            if key.startswith(("label_embed", "group_embed")):  # W is in x out, a is 2out x 1
                fan_in = shape[0]
            std = (2.0 / fan_in) ** 0.5
            if key.endswith("conv3.weight"):
                std *= 0.2  # keep the residual branches small so 33 blocks do not blow up
            sd[key] = std * _randn(shape, g, dtype)
    return sd


TILE_COLUMNS = 4099  # prime, so no flattening period of the model (D, 3D, C+K...) lines up with it


def _randn(shape: tuple[int, ...], g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal values; matrices over 4M entries (fc1: up to 264M) repeat a random
    rows x 4099 block along the columns, which is ~30x cheaper and still gives every input
    position of a flattened feature its own weight pattern."""
    if len(shape) != 2 or shape[0] * shape[1] <= 1 << 22 or shape[1] <= TILE_COLUMNS:
        return torch.randn(shape, generator=g, dtype=dtype)
    block = torch.randn(shape[0], TILE_COLUMNS, generator=g, dtype=dtype)
    out = torch.empty(shape, dtype=dtype)
    for start in range(0, shape[1], TILE_COLUMNS):
        width = min(TILE_COLUMNS, shape[1] - start)
        out[:, start : start + width] = block[:, :width]
    return out


# ---------------------------------------------------------------- the reference's tuned-on-the-test-set figures


def reference_tuned_search(scores: np.ndarray, targets: np.ndarray) -> tuple[float | None, dict[str, float]]:
    """util.py's threshold search restated with plain loops: every threshold x / 10 - 1 for x = 0..19,
    float32 scores compared in float32, difficult (-1) and 0 both negative, a label with no prediction
    has 1 prediction, the first strictly larger CF1 + OF1 above 0 wins. Fractions, not percent."""
    n, c = scores.shape
    chosen: tuple[float | None, dict[str, float]] = (None, dict.fromkeys(("CP", "CR", "CF1", "OP", "OR", "OF1"), 0.0))
    best = 0.0
    for x in range(20):
        t = np.float32(x * 0.1 - 1)
        correct, predicted, relevant = [0] * c, [0] * c, [0] * c
        for i in range(n):
            for j in range(c):
                hit = bool(np.float32(scores[i, j]) >= t)
                predicted[j] += hit
                relevant[j] += int(targets[i, j] == 1)
                correct[j] += int(hit and targets[i, j] == 1)
        predicted = [max(p, 1) for p in predicted]
        with np.errstate(divide="ignore", invalid="ignore"):
            op = np.float64(sum(correct)) / sum(predicted)
            orec = np.float64(sum(correct)) / sum(relevant)
            cp = sum(np.float64(a) / b for a, b in zip(correct, predicted)) / c
            cr = sum(np.float64(a) / b for a, b in zip(correct, relevant)) / c
            of1 = 2 * op * orec / (op + orec)
            cf1 = 2 * cp * cr / (cp + cr)
        if cf1 + of1 > best:
            best = cf1 + of1
            chosen = (round(x * 0.1 - 1, 1), {"CP": cp, "CR": cr, "CF1": cf1, "OP": op, "OR": orec, "OF1": of1})
    return chosen


def reference_top_k_matrix(logits: torch.Tensor, k: int) -> np.ndarray:
    """util.py's top-k scores: -1 everywhere, then for each of an image's k best (torch.topk) 1 if its logit >= 0."""
    out = -np.ones(tuple(logits.shape))
    index = logits.topk(k, 1, True, True)[1]
    for i in range(logits.shape[0]):
        for j in index[i].tolist():
            out[i, j] = 1.0 if float(logits[i, j]) >= 0 else -1.0
    return out
