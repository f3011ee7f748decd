"""The pretraining objective: albedo (and optional shading, RGB, height) L1, scene-property classification,
optional masked-image modelling and supervised-contrastive object grouping."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtpeft_bench.pretraining.config import PretrainConfig
from mtpeft_bench.pretraining.corpus import LABELS


def pretrain_losses(model: nn.Module, images: torch.Tensor, mask: torch.Tensor | None, albedo: torch.Tensor,
                    labels: dict[str, torch.Tensor], cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    """``{"loss", "mim", "albedo", "labels"}``: the masked-pixel L1 (0 without a mask), the albedo L1
    over all pixels, the mean of the label losses, and their weighted sum."""
    out = model(images, mask)
    if mask is not None:
        stride = images.shape[-1] // mask.shape[-1]
        pixel_mask = mask.repeat_interleave(stride, 1).repeat_interleave(stride, 2).unsqueeze(1).to(images.dtype)
        mim = (F.l1_loss(out["pixels"], images, reduction="none") * pixel_mask).sum() / (pixel_mask.sum() * 3 + 1e-6)
    else:
        mim = images.new_zeros(())
    dense = dict(zip(("albedo", "shading", "height", "recon"),
                     torch.split(out["albedo"], list(cfg.dense_layout.values()), dim=1)))
    albedo_loss = F.l1_loss(dense["albedo"], albedo[:, :3])
    shading_loss = F.l1_loss(dense["shading"], albedo[:, 3:4]) if cfg.shading_weight > 0 else images.new_zeros(())
    recon = F.l1_loss(dense["recon"], images) if cfg.recon_weight > 0 else images.new_zeros(())
    if cfg.height_weight > 0:
        ground = labels["height"] >= 0  # the sky (-1) has no height
        error = F.l1_loss(dense["height"], labels["height"].clamp_min(0), reduction="none")
        height_loss = (error * ground).sum() / ground.sum().clamp_min(1)
    else:
        height_loss = images.new_zeros(())
    if cfg.group_weight > 0:
        group_loss = grouping_loss(out["embed"], labels["object"], cfg.group_temperature)
    else:
        group_loss = images.new_zeros(())
    terms, start = [], 0
    for name, (kind, size) in LABELS.items():
        logits = out["logits"][:, start:start + size]
        start += size
        if kind == "multi_hot":
            terms.append(F.binary_cross_entropy_with_logits(logits, labels[name].float()))
        else:
            terms.append(F.cross_entropy(logits, labels[name]))
    label_loss = torch.stack(terms).mean()
    total = mim + cfg.albedo_weight * albedo_loss + cfg.shading_weight * shading_loss + cfg.label_weight * label_loss
    total = total + cfg.recon_weight * recon + cfg.height_weight * height_loss + cfg.group_weight * group_loss
    return {"loss": total, "mim": mim, "recon": recon, "height": height_loss, "group": group_loss,
            "albedo": albedo_loss, "shading": shading_loss, "labels": label_loss}


def grouping_loss(embed: torch.Tensor, objects: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020) over the cells of the feature grid.

    embed (B, D, h, w): a linear read-out of the encoder's features; objects (B, 1, H, W) int: which
    object each pixel sees (0 sky, 1 ground, 2+ objects). Every cell whose pixels mostly (> 50 %)
    see one object is an anchor; its positives are the other cells of the same image that see the
    same object, and every other cell of the batch is a negative. Pulls the features of one object
    together and pushes different objects (and images) apart: instance grouping, not a class label.
    """
    b, d, h, w = embed.shape
    ids = objects.long().squeeze(1)
    n_ids = int(ids.max()) + 1
    share = F.adaptive_avg_pool2d(F.one_hot(ids, n_ids).permute(0, 3, 1, 2).float(), (h, w))  # (B, K, h, w)
    purity, cell = share.max(dim=1)
    z = F.normalize(embed.permute(0, 2, 3, 1).reshape(-1, d), dim=1)
    key = (torch.arange(b).view(b, 1, 1) * n_ids + cell).reshape(-1)
    valid = purity.reshape(-1) > 0.5
    z, key = z[valid], key[valid]
    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool)
    logits = logits.masked_fill(eye, float("-inf"))
    pos = (key[:, None] == key[None, :]) & ~eye
    has = pos.any(dim=1)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_anchor = -(log_prob.masked_fill(~pos, 0).sum(dim=1) / pos.sum(dim=1).clamp_min(1))
    return per_anchor[has].mean() if has.any() else embed.new_zeros(())
