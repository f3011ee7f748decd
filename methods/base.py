"""The method interface.

A method changes only the encoder. It is a class registered with ``@register_method("name")``:

- ``Config``: a frozen dataclass of its hyper-parameters (``--set method.<key>=<value>``),
  validated in ``__post_init__``; its docstring cites the paper.
- ``build(backbone, tasks, cfg) -> encoder``: wraps or injects into the stock timm Swin, freezes
  what the method does not train and returns an encoder (usually
  :class:`mtpeft_bench.model.encoder.MultiTaskSwinEncoder`) whose ``forward(images)`` returns
  ``{task: [four NCHW stage features]}`` and whose ``out_channels`` lists their channels.

What trains is what has ``requires_grad``. Optional capabilities are attributes of the encoder
that the runner reads (it never asks which method it runs):

- ``method_info() -> dict``: facts to record in the result (e.g. which kernel ran);
- ``extra_loss() -> Tensor | None``: a term added to the training loss;
- ``find_unused_parameters: bool``: DDP must look for parameters that get no gradient;
- ``after_step(global_step, total_steps) -> None``: called by the fit loop after every optimizer
  step (``global_step`` counts from 1 to ``total_steps``, the run's optimizer steps over all its
  epochs), before the gradients are cleared; for methods with a schedule of their own, e.g.
  AdaLoRA's rank budget (peft's ``update_and_allocate``). Without it nothing is called;
- ``rebuilt_weights() -> dict[str, Tensor]``: the adapted weights as plain tensors by module
  path, for ``mtbench export``'s merged file when they cannot fold into a stock Swin (DiTASK);
- ``peft_tuner``: peft's tuner object, whose adapter ``mtbench export`` saves in peft's layout;
- ``merge_for_inference() -> nn.Module``: a *new* encoder with the method's weights folded into
  the backbone's (e.g. LoRA's ``W + s·B·A`` through peft's ``merge_and_unload`` on a deep copy)
  that computes the same features at the plain backbone's cost. It must leave the trained
  encoder unchanged (the runner keeps using it) and may return None when this configuration
  cannot merge. When present, the runner measures inference of both forms side by side
  (FLOPs, latency at batch 1, images/s at the run's batch size) and the largest difference of
  their outputs (``efficiency.inference`` in the result).

Parameters the method adds to the backbone are reported as the method's own group; the
parameter report finds them by identity (they are not among the backbone's original ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence


@dataclass(frozen=True)
class MethodConfig:
    """Base of method hyper-parameters; a method subclasses it and validates in ``__post_init__``."""


class Method:
    """Base class with the defaults of the interface (subclassing it is optional)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type] = MethodConfig

    def build(self, backbone: Any, tasks: Sequence[str], cfg: Any) -> Any:
        """Return the multi-task encoder built around ``backbone`` for ``tasks``."""
        raise NotImplementedError


def freeze(module: Any) -> None:
    """Set ``requires_grad=False`` on every parameter of ``module``."""
    for param in module.parameters():
        param.requires_grad_(False)
