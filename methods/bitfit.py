"""BitFit: only the backbone's bias terms train (plus the decoder heads), shared by all tasks.

Ben Zaken, Ravfogel, Goldberg. "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", ACL 2022 (arXiv:2106.10199): every weight stays
frozen and only the additive bias terms train — those of the attention and MLP linears and of the
LayerNorms (their shift ``β``; the gains stay frozen). On Swin these are the qkv/proj/fc1/fc2
biases, the patch-embedding conv's bias and the LayerNorm biases (PatchMerging reductions have
none): 51,456 parameters for Swin-T. ``norm_biases=false`` keeps the LayerNorm biases frozen.

Nothing else trains: unlike the other baselines, BitFit does not train the protocol's extras.
The "BitFit" row of the MTLoRA table (2.85M with the 1.95M decoder, docs/protocol.md 5.4) counts more
than Swin-T's biases; this plugin makes no claim to match it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtpeft_bench.methods.base import Method, MethodConfig, freeze
from mtpeft_bench.model.encoder import MultiTaskSwinEncoder
from mtpeft_bench.model.params import backbone_param_kind
from mtpeft_bench.registry import register_method


@dataclass(frozen=True)
class BitFitConfig(MethodConfig):
    """Options of ``bitfit`` (Ben Zaken et al., ACL 2022, arXiv:2106.10199).

    Attributes:
        norm_biases: whether the LayerNorm biases (β) train along with the linear and conv biases.
    """

    norm_biases: bool = True

    def __post_init__(self):
        if not isinstance(self.norm_biases, bool):
            raise ValueError(f"norm_biases must be true or false, got {self.norm_biases!r}")


def is_trainable_bias(name: str, norm_biases: bool) -> bool:
    """Whether the backbone parameter ``name`` is a bias BitFit trains."""
    if name.rsplit(".", 1)[-1] != "bias":
        return False
    kind = backbone_param_kind(name)
    is_norm = kind == "norms" or (kind == "patch_embed" and ".norm." in f".{name}")
    return norm_biases or not is_norm


class BitFitEncoder(MultiTaskSwinEncoder):
    def __init__(self, backbone, tasks, cfg: BitFitConfig):
        super().__init__(backbone, tasks)
        self._info = {"norm_biases": cfg.norm_biases}

    def method_info(self):
        return {**super().method_info(), **self._info}


@register_method("bitfit")
class BitFit(Method):
    """BitFit: only the backbone's biases (and the decoders) train, shared by all tasks."""

    paper = "https://arxiv.org/abs/2106.10199"
    Config = BitFitConfig

    def build(self, backbone, tasks, cfg):
        freeze(backbone)
        for name, param in backbone.named_parameters():
            if is_trainable_bias(name, cfg.norm_biases):
                param.requires_grad_(True)
        return BitFitEncoder(backbone, tasks, cfg)
