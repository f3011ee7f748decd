"""LoRA through the peft library, one set of adapters shared by all tasks.

LoRA: Low-Rank Adaptation of Large Language Models (Hu et al., ICLR 2022, arXiv:2106.09685):
each adapted linear computes ``W x + b + (alpha / r) · B A dropout(x)`` with ``W``, ``b`` frozen,
``A`` (r × in) Kaiming-uniform and ``B`` (out × r) zero at the start. Here it is peft's own
``LoraConfig``/``LoraModel`` injected into the stock timm Swin (no hand-written LoRA), on the 48
block linears (qkv, proj, fc1, fc2; an anchored regex, so ``patch_embed.proj`` is not caught).

As the "LoRA" row of the MTLoRA table (Agiza et al., CVPR 2024, arXiv:2403.20320) it is the
shared-feature baseline: every task reads the same encoder features. By default the backbone's
"extras" (patch embedding, LayerNorms, relative-position tables, PatchMerging reductions) train
as in the MTLoRA/DiTASK protocol, and the linears' biases stay frozen (peft's ``bias="none"``;
MTLoRA's ``BIAS: none``). Two deliberate choices, both switches:

- ``lora_alpha`` defaults to ``4·r``: the LoRA scale alpha/r is then 4.0, the scale MTLoRA uses as
  is (docs/protocol.md 5.1); peft's own default would give 2.0 at r = 4.
- ``lora_dropout`` defaults to 0.05, MTLoRA's LoRA dropout (peft's default is 0).

The MTLoRA paper's LoRA row (2.87M) cannot be reproduced from its code (scale-lab/MTLoRA issue #8;
docs/protocol.md 5.4); this plugin makes no claim to match it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtpeft_bench.methods._peft_util import BLOCK_LINEARS, finish_peft_injection, inject_peft
from mtpeft_bench.methods.base import Method, MethodConfig, freeze
from mtpeft_bench.model.encoder import MultiTaskSwinEncoder
from mtpeft_bench.model.params import extra_parameters
from mtpeft_bench.registry import register_method


@dataclass(frozen=True)
class LoraMethodConfig(MethodConfig):
    """Options of ``lora`` (peft's ``LoraConfig`` names; Hu et al. 2022, arXiv:2106.09685).

    Attributes:
        r: LoRA rank.
        lora_alpha: scale numerator; the update is multiplied by ``lora_alpha / r``.
            ``None``: ``4·r`` (scale 4, as MTLoRA).
        lora_dropout: dropout on the LoRA input.
        use_dora: weight-decomposed LoRA (DoRA, Liu et al., ICML 2024).
        init_lora_weights: peft's init: ``true`` (Kaiming-uniform A, zero B), ``false``, or a
            named scheme such as ``gaussian``, ``pissa``, ``olora``.
        target_modules: regex (peft ``re.fullmatch`` on module names) of the layers to adapt;
            default: the 48 block linears.
        train_extras: whether the patch embedding, LayerNorms, relative-position tables and
            PatchMerging reductions train (the MTLoRA/DiTASK protocol; default ``true``).
    """

    r: int = 4
    lora_alpha: float | None = None
    lora_dropout: float = 0.05
    use_dora: bool = False
    init_lora_weights: bool | str = True
    target_modules: str = BLOCK_LINEARS
    train_extras: bool = True

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"r must be a positive integer, got {self.r!r}")
        if self.lora_alpha is not None and (isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float))
                                            or self.lora_alpha <= 0):
            raise ValueError(f"lora_alpha must be a positive number (or null for 4·r), got {self.lora_alpha!r}")
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float)) \
                or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        for name in ("use_dora", "train_extras"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.init_lora_weights, (bool, str)):
            raise ValueError(f"init_lora_weights must be true, false or a scheme name, got {self.init_lora_weights!r}")
        if not isinstance(self.target_modules, str) or not self.target_modules:
            raise ValueError(f"target_modules must be a regex string, got {self.target_modules!r}")

    @property
    def alpha(self) -> float:
        return float(4 * self.r if self.lora_alpha is None else self.lora_alpha)

    def peft_config(self):
        """The equivalent ``peft.LoraConfig``."""
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=float(self.lora_dropout),
                          use_dora=self.use_dora, init_lora_weights=self.init_lora_weights,
                          target_modules=self.target_modules, bias="none")


class LoraEncoder(MultiTaskSwinEncoder):
    """The shared multi-task encoder with peft's LoRA layers inside the backbone."""

    def __init__(self, backbone, tasks, cfg: LoraMethodConfig, tuner=None):
        super().__init__(backbone, tasks)
        # peft's tuner (it wraps the backbone), kept outside the module tree so no parameter is
        # registered twice; mtbench export saves its adapter in peft's own layout.
        object.__setattr__(self, "peft_tuner", tuner)
        self._info = {"peft_type": "LORA", "r": cfg.r, "lora_alpha": cfg.alpha, "scale": cfg.alpha / cfg.r,
                      "lora_dropout": float(cfg.lora_dropout), "use_dora": cfg.use_dora,
                      "train_extras": cfg.train_extras}

    def method_info(self):
        import peft

        return {**super().method_info(), **self._info, "peft_version": peft.__version__}


@register_method("lora")
class Lora(Method):
    """LoRA (peft) on the 48 block linears of Swin, shared by all tasks; extras train as in MTLoRA."""

    paper = "https://arxiv.org/abs/2106.09685"
    Config = LoraMethodConfig

    def build(self, backbone, tasks, cfg):
        freeze(backbone)
        extras = extra_parameters(backbone)
        tuner = inject_peft(backbone, cfg.peft_config())
        finish_peft_injection(backbone, extras, cfg.train_extras)
        return LoraEncoder(backbone, tasks, cfg, tuner)
