"""Training losses on logits: the paper's soft margin (default), Asymmetric Loss and focal loss.

Targets come in the dataset's encoding (msrn.targets): present (1) and VOC difficult (-1) count
as positive, as the reference trains; absent (0) is negative; unknown (-2) entries are left out.
Every loss is the mean over the known entries of the batch, so with no unknown entry ASL with
gamma 0 and no clip is exactly the soft-margin loss (binary cross-entropy, averaged).
Everything is computed from log-sigmoids in float32: finite values and gradients even at
saturated logits (|x| = 100), where a log of a rounded probability would give inf.
`objective` adds the model's group loss: the one definition that training minimises and that the
validation and test losses report, so the curves compare.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from msrn.models import MSRN
from msrn.targets import NEGATIVE, UNKNOWN

LOSSES = ("softmargin", "asl", "focal")
# Asymmetric Loss (Ridnik et al., ICCV 2021): the paper's settings, also its training script's
# (the repository's AsymmetricLoss class defaults to gamma_pos=1, its train.py passes 0)
ASL_GAMMA_NEG, ASL_GAMMA_POS, ASL_CLIP = 4.0, 0.0, 0.05
# focal loss (Lin et al., ICCV 2017): the paper's settings
FOCAL_GAMMA, FOCAL_ALPHA = 2.0, 0.25

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _split(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 logits, the 0/1 positive matrix (difficult counts positive) and the known-entry mask."""
    known = targets != UNKNOWN
    positive = (known & (targets != NEGATIVE)).float()
    return logits.float(), positive, known.float()


def _known_mean(per_entry: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Mean of the per-entry losses over the known entries (0 when a batch has none)."""
    return (per_entry * known).sum() / known.sum().clamp(min=1.0)


def _focus(base: torch.Tensor, gamma: float) -> torch.Tensor:
    """base ** gamma for base in [0, 1], with a finite gradient where base is 0 (also for gamma < 1)."""
    if gamma == 0:
        return torch.ones_like(base)
    safe = base.clamp(min=torch.finfo(base.dtype).tiny)
    return torch.where(base > 0, safe.pow(gamma), torch.zeros_like(base))


def soft_margin_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The paper's multi-label soft margin loss: -[y log p + (1 - y) log(1 - p)], mean over known entries."""
    x, y, known = _split(logits, targets)
    # torch's loss with unknown entries weighted 0 is the sum over known entries / (B*C); rescaled to their
    # mean without asking the host whether any is unknown (a device sync per step). Fully labelled, the
    # factor is exactly 1: the same floats as torch's own loss.
    return F.multilabel_soft_margin_loss(x, y, weight=known) * (known.numel() / known.sum().clamp(min=1.0))


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_neg: float = ASL_GAMMA_NEG,
    gamma_pos: float = ASL_GAMMA_POS,
    clip: float = ASL_CLIP,
) -> torch.Tensor:
    """ASL: positives -(1 - p)^gamma_pos log p; negatives -p_m^gamma_neg log(1 - p_m) with the shifted
    probability p_m = max(p - clip, 0) (easy negatives below `clip` give nothing); mean over known entries."""
    x, y, known = _split(logits, targets)
    pos = _focus(torch.sigmoid(-x), gamma_pos) * F.logsigmoid(x)
    if clip > 0:
        shifted = (torch.sigmoid(x) - clip).clamp(min=0.0)
        log_not = torch.log((torch.sigmoid(-x) + clip).clamp(max=1.0))  # log(1 - p_m), >= log(clip)
    else:
        shifted, log_not = torch.sigmoid(x), F.logsigmoid(-x)
    neg = _focus(shifted, gamma_neg) * log_not
    return _known_mean(-(y * pos + (1 - y) * neg), known)


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float = FOCAL_GAMMA, alpha: float = FOCAL_ALPHA
) -> torch.Tensor:
    """Focal loss: -alpha_t (1 - p_t)^gamma log p_t, with alpha for positives and 1 - alpha for
    negatives; mean over known entries."""
    x, y, known = _split(logits, targets)
    pos = alpha * _focus(torch.sigmoid(-x), gamma) * F.logsigmoid(x)
    neg = (1 - alpha) * _focus(torch.sigmoid(x), gamma) * F.logsigmoid(-x)
    return _known_mean(-(y * pos + (1 - y) * neg), known)


def build_loss(
    name: str,
    asl_gamma_neg: float = ASL_GAMMA_NEG,
    asl_gamma_pos: float = ASL_GAMMA_POS,
    asl_clip: float = ASL_CLIP,
    focal_gamma: float = FOCAL_GAMMA,
    focal_alpha: float = FOCAL_ALPHA,
) -> LossFn:
    """The loss `name` (one of LOSSES) with its settings bound: a function of (logits, targets)."""
    if name == "softmargin":
        return soft_margin_loss
    if name == "asl":
        return lambda x, t: asymmetric_loss(x, t, asl_gamma_neg, asl_gamma_pos, asl_clip)
    if name == "focal":
        return lambda x, t: focal_loss(x, t, focal_gamma, focal_alpha)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


def objective(
    loss: LossFn, logits: torch.Tensor, targets: torch.Tensor, group_loss: torch.Tensor | float
) -> torch.Tensor:
    """What training minimises and every reported loss shows: `loss` on the targets as the dataset
    encodes them (difficult positive, unknown left out) plus the model's group loss."""
    return loss(logits, targets) + group_loss


@torch.no_grad()
def model_group_loss(model: nn.Module) -> float:
    """The model's group loss: it depends on the weights only, not on images (0 for the baseline)."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    return float(model.semantics().group_loss) if isinstance(model, MSRN) else 0.0
