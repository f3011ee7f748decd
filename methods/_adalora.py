"""AdaLoRA inside the one training loop: its rank budget schedule, its orthogonal regulariser and
the rank allocation it ends with.

AdaLoRA (Zhang et al., "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", ICLR 2023,
arXiv:2303.10512) parametrises each update as ``P Λ Q`` (peft: ``lora_B``, ``lora_E``, ``lora_A``),
scores every singular triplet by a smoothed sensitivity ``|p · ∂L/∂p|`` and, on a cubic schedule
from ``init_r`` to ``target_r`` triplets per layer on average, zeroes the least important ones.
peft implements the scoring and the masking (``AdaLoraModel.update_and_allocate``), which must run
after every optimizer step while the gradients are still there; here it runs from the encoder's
``after_step`` hook (methods/base.py). peft adds the orthogonal regulariser
``R = mean over A and B of ||P Pᵀ − I||_F`` only to the ``loss`` of a transformers model's output,
which a Swin feature extractor does not have, so it is added here through ``extra_loss`` (the
same formula, weighted by ``orth_reg_weight``).

Not a plugin (the leading underscore keeps the registry scan away).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from mtpeft_bench.errors import UserError


def provisional_total_step(options: dict[str, Any]) -> int:
    """A ``total_step`` that passes peft's check of the schedule at build time (``tinit`` must be
    below ``total_step − tfinal``); the run replaces it with its own total before the first step."""
    return int(options.get("tinit") or 0) + int(options.get("tfinal") or 0) + 1


class AdaLoraSchedule:
    """The run's side of AdaLoRA: sets ``total_step``, calls peft's allocator, adds the regulariser.

    Args:
        tuner: peft's ``AdaLoraModel`` injected into the backbone (its ``model``).
        adapter: the adapter's name in peft (``default``).
    """

    def __init__(self, tuner: Any, adapter: str = "default"):
        self.tuner, self.adapter = tuner, adapter
        self.config = tuner.peft_config[adapter]
        self.initial_rank = int(self.config.init_r)
        self.started = False

    def after_step(self, global_step: int, total_steps: int) -> None:
        """peft's ``update_and_allocate`` after optimizer step ``global_step`` (1 … ``total_steps``).

        Raises:
            UserError: ``tinit`` and ``tfinal`` leave no step of the run for the budget schedule.
        """
        if not self.started:
            self._start(global_step, total_steps)
        self.tuner.update_and_allocate(global_step)

    def _start(self, global_step: int, total_steps: int) -> None:
        cfg = self.config
        if cfg.tinit >= total_steps - cfg.tfinal:
            raise UserError(f"AdaLoRA's schedule does not fit this run's {total_steps} optimizer steps: tinit "
                            f"({cfg.tinit}) must be below the steps minus tfinal ({cfg.tfinal}); lower "
                            "method.tinit / method.tfinal or train longer")
        cfg.total_step = total_steps  # the rank allocator reads the same config object
        if cfg.rank_pattern is None and global_step > total_steps - cfg.tfinal:
            # Resumed after the final allocation: the kept triplets are the non-zero entries of Λ.
            cfg.rank_pattern = {name: (param.detach() != 0).view(-1).tolist()
                                for name, param in self.tuner.model.named_parameters()
                                if f"lora_E.{self.adapter}" in name}
        self.started = True

    def orthogonal_regulariser(self) -> torch.Tensor | None:
        """``orth_reg_weight · mean(||A Aᵀ − I||_F, ||Bᵀ B − I||_F)`` over the adapted layers (peft's
        formula); None when the weight is 0."""
        weight = float(self.config.orth_reg_weight)
        if weight == 0:
            return None
        terms = []
        for name, param in self.tuner.model.named_parameters():
            if (".lora_A." in name or ".lora_B." in name) and name.endswith(f".{self.adapter}"):
                gram = param @ param.T if ".lora_A." in name else param.T @ param
                eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
                terms.append(torch.linalg.matrix_norm(gram - eye, ord="fro"))
        return weight * torch.stack(terms).mean() if terms else None

    def rank_allocation(self) -> dict[str, int]:
        """``{adapted module: kept rank}``: from peft's ``rank_pattern`` once the allocator masked,
        else every module at ``init_r``."""
        pattern = self.config.rank_pattern
        ranks = {}
        for name, param in self.tuner.model.named_parameters():
            if f"lora_E.{self.adapter}" not in name:
                continue
            module = re.sub(rf"\.lora_E\.{re.escape(self.adapter)}$", "", name)
            kept = pattern.get(name, pattern.get(name.replace(f".{self.adapter}", ""))) if pattern else None
            ranks[module] = int(sum(bool(k) for k in kept)) if kept is not None else int(param.shape[0])
        return ranks

    def info(self) -> dict[str, Any]:
        """What the result records: the schedule and the final rank of every adapted module."""
        ranks = self.rank_allocation()
        cfg = self.config
        return {"adalora": {"init_r": self.initial_rank, "target_r": int(cfg.target_r), "tinit": int(cfg.tinit),
                            "tfinal": int(cfg.tfinal), "deltaT": int(cfg.deltaT), "total_step": int(cfg.total_step),
                            "orth_reg_weight": float(cfg.orth_reg_weight), "total_rank": sum(ranks.values()),
                            "ranks": ranks}}
