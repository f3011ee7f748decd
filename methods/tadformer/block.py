"""A timm Swin block run the TADFormer way: task prompts in every window, task paths in the last block.

Baek et al., CVPR 2025 (arXiv:2501.04293), Sec. 3.2-3.4; written anew from a reading of
``Min100KM/TADFormer`` @ 1f53b9f (``models/swin_transformer_tadformer.py`` SwinTransformerBlock /
WindowAttention, ``models/lora.py`` TAModuleLinear). Symbols: B images, H×W tokens, C channels,
nH heads, (wh, ww) window, N = wh·ww, nW windows per image, T task prompts (one per task).

Every block (:class:`PromptedBlock`):

1. the prompts go through the block's ``norm1`` and are put in front of the N tokens of every
   window; attention runs over T + N tokens with the block's (LoRA'd) qkv. The relative-position
   bias and the shift mask apply only to the token-token part, so prompts and tokens attend to each
   other freely (the shared stream is prompt-conditioned too);
2. the (LoRA'd) projection runs on all T + N rows; the prompt rows, averaged over the windows,
   give p̂, and the new prompts are ``p + DropPath(MLP(norm2(p̂)))`` (no attention residual; the
   very last block of the model keeps p̂ and skips that MLP, as the released code does);
3. the tokens finish the block as in Swin.

The task-adapting block (the last of each stage, ``adapt=True``) also produces one stream per task:

- **TPC** (task-prompt-conditioned operator): m_t = GELU(q_{prompt t} · k_tokensᵀ), the raw logits
  (no scale, bias or softmax) of task t's prompt against the window's tokens, one map per head;
  ``tpc_t = m_t ⊙ ã`` on each head's channels, with ã the dropped-out attention output of the
  tokens; the projection's task input is ``u_t = LN_p(ã + tpc_t)`` (``prompt_norm``, shared by
  the tasks);
- proj, fc1, fc2 compute ``W x + b + s · B F_t(A x_t)``: the frozen term on the SHARED input x
  (as MTLoRA), the shared LoRA factors A, B around the task filter F_t
  (:mod:`.filters`) applied in rank space — per window for proj, on the whole map for fc1/fc2;
- the block also returns ``tpc_t`` put back on the image grid, the "skip feature" the stage gate
  mixes in. ``skip_layout='release'`` reproduces the released code, which stores tpc_t
  channel-first (C, N) and reads that memory as (wh, ww, C), a fixed permutation of channels and
  positions within each window; ``skip_layout='corrected'`` keeps the map as computed.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import window_partition, window_reverse
from torch import nn

from mtpeft_bench.methods.mtlora import SharedLoRALinear
from mtpeft_bench.methods.tadformer.filters import make_filter

TaskMaps = dict[str, torch.Tensor]
SKIP_LAYOUTS = ("release", "corrected")
TASK_ROLES = ("proj", "fc1", "fc2")


def filtered_term(linear: SharedLoRALinear, task_filter: nn.Module, x: torch.Tensor, task: str) -> torch.Tensor:
    """``s · B F_t(A x)`` for a map ``x`` (B', h, w, in) → (B', h, w, out), F_t applied to (B', r, h, w)."""
    u = F.linear(x, linear.lora_A).permute(0, 3, 1, 2)
    u = task_filter(u, task).permute(0, 2, 3, 1)
    return F.linear(u, linear.lora_B) * linear.scale


def tpc_feature(tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The TPC feature ``GELU(ℓ_h) ⊙ ã`` on each head's channels.

    Args:
        tokens: ã (B', N, C), the dropped-out attention output of the window's tokens.
        logits: ℓ (B', nH, N), one task prompt's raw attention logits against the tokens.

    Returns:
        (B', N, C): channel c is scaled by GELU(ℓ) of head ``c // (C / nH)`` at each token.
    """
    heads = logits.shape[1]
    gate = F.gelu(logits).repeat_interleave(tokens.shape[-1] // heads, dim=1)  # (B', C, N)
    return tokens * gate.transpose(1, 2)


def skip_windows(tpc: torch.Tensor, window: tuple[int, int], layout: str) -> torch.Tensor:
    """TPC features (B', N, C) as windows (B', wh, ww, C) in the chosen ``layout`` (module docstring)."""
    b, n, c = tpc.shape
    if layout == "release":  # the released code's .view(-1, wh, ww, C) of a channel-first (B', C, N) tensor
        return tpc.transpose(1, 2).contiguous().view(b, window[0], window[1], c)
    return tpc.reshape(b, window[0], window[1], c)


class PromptedBlock(nn.Module):
    """A timm ``SwinTransformerBlock`` with TADFormer's prompt stream and, if ``adapt``, task streams.

    Args:
        block: the stock timm block whose qkv, proj, fc1 and fc2 are already
            :class:`~mtpeft_bench.methods.mtlora.SharedLoRALinear` (the shared LoRA).
        tasks: task names (the prompts are in this order).
        adapt: whether this is a task-adapting block (task filters on proj, fc1, fc2).
        filter_kind: ``static`` or ``dtf`` (:mod:`.filters`).
        skip_layout: ``release`` or ``corrected`` (module docstring).
        update_prompts: False for the very last block of the model (the released code keeps p̂ there).

    Every block owns a ``prompt_norm`` (LayerNorm(C)) as the released code does for every attention
    projection; only task-adapting blocks use it (the others are dead weights the paper's counts include).

    ``forward(x (B, H, W, C), prompts (B, T, C))`` returns ``(x (B, H, W, C), prompts (B, T, C),
    tasks, skips)`` where ``tasks`` and ``skips`` are ``{task: (B, H, W, C)}`` or None.
    """

    def __init__(self, block: nn.Module, tasks: Sequence[str], adapt: bool, filter_kind: str, skip_layout: str,
                 update_prompts: bool = True):
        super().__init__()
        if not hasattr(block, "attn") or not hasattr(block.attn, "relative_position_bias_table"):
            raise TypeError(f"{type(block).__name__} is not a timm SwinTransformerBlock this version supports")
        if skip_layout not in SKIP_LAYOUTS:
            raise ValueError(f"skip_layout must be one of {', '.join(SKIP_LAYOUTS)}, got {skip_layout!r}")
        self.block = block
        self.tasks = tuple(tasks)
        self.adapt = adapt
        self.skip_layout = skip_layout
        self.update_prompts = update_prompts
        dim = block.norm1.normalized_shape[0]
        self.prompt_norm = nn.LayerNorm(dim)
        if adapt:
            layers = {"proj": block.attn.proj, "fc1": block.mlp.fc1, "fc2": block.mlp.fc2}
            self.task_filters = nn.ModuleDict({role: make_filter(filter_kind, layer.lora_A.shape[0], self.tasks)
                                               for role, layer in layers.items()})

    # -- windows ---------------------------------------------------------------------------------

    def _to_windows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, C) → (shifted, padded windows (B·nW, N, C), the shifted padded map), as timm's block does."""
        blk = self.block
        if any(blk.shift_size):
            x = torch.roll(x, shifts=(-blk.shift_size[0], -blk.shift_size[1]), dims=(1, 2))
        _, h, w, c = x.shape
        pad_h = (blk.window_size[0] - h % blk.window_size[0]) % blk.window_size[0]
        pad_w = (blk.window_size[1] - w % blk.window_size[1]) % blk.window_size[1]
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        return window_partition(x, blk.window_size).view(-1, blk.window_size[0] * blk.window_size[1], c), x

    def _from_windows(self, windows: torch.Tensor, padded: torch.Size, h: int, w: int) -> torch.Tensor:
        """Windows (B·nW, wh, ww, C) → (B, H, W, C): reverse partition, crop the padding, undo the shift."""
        blk = self.block
        hp, wp = padded[1:3]
        x = window_reverse(windows, blk.window_size, hp, wp)[:, :h, :w, :]
        if any(blk.shift_size):
            x = torch.roll(x, shifts=blk.shift_size, dims=(1, 2))
        return x

    def _attention_bias(self, prompts: int, batch: int, padded: torch.Tensor) -> torch.Tensor:
        """Additive attention bias (B·nW or 1, nH, T+N, T+N): rel-pos bias and shift mask on tokens only."""
        blk, attn = self.block, self.block.attn
        n = blk.window_size[0] * blk.window_size[1]
        rel = attn.relative_position_bias_table[attn.relative_position_index.view(-1)].view(n, n, -1)
        bias = F.pad(rel.permute(2, 0, 1), (prompts, 0, prompts, 0))[None]  # (1, nH, L, L)
        mask = blk.get_attn_mask(padded) if getattr(blk, "dynamic_mask", False) else blk.attn_mask
        if mask is not None:
            mask = F.pad(mask.to(bias.dtype), (prompts, 0, prompts, 0))  # (nW, L, L)
            bias = (bias + mask[:, None]).repeat(batch, 1, 1, 1)  # window index is the fast one
        return bias

    # -- forward ---------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, prompts: torch.Tensor):
        blk, attn = self.block, self.block.attn
        b, h, w, c = x.shape
        t_len = prompts.shape[1]
        windows, padded = self._to_windows(blk.norm1(x))
        bw, n, _ = windows.shape
        n_win = bw // b
        p = blk.norm1(prompts)[:, None].expand(b, n_win, t_len, c).reshape(bw, t_len, c)
        tokens = torch.cat([p, windows], dim=1)
        qkv = attn.qkv(tokens).reshape(bw, t_len + n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._attention_bias(t_len, b, padded),
                                             dropout_p=attn.attn_drop.p if self.training else 0.0, scale=attn.scale)
        out = out.transpose(1, 2).reshape(bw, t_len + n, c)

        proj = attn.proj
        base = proj.base(out)
        dropped = proj.lora_dropout(out)
        y = attn.proj_drop(base + proj.delta(dropped))
        p_hat = y[:, :t_len].reshape(b, n_win, t_len, c).mean(dim=1)
        attn_map = self._from_windows(y[:, t_len:].reshape(bw, *blk.window_size, c), padded.shape, h, w)
        x1 = x + blk.drop_path1(attn_map)

        mlp = blk.mlp
        n2 = blk.norm2(x1)
        h_base = mlp.fc1.base(n2)
        hidden = mlp.norm(mlp.drop1(mlp.act(h_base + mlp.fc1.delta(mlp.fc1.lora_dropout(n2)))))
        x_out = x1 + blk.drop_path2(mlp.drop2(mlp.fc2(hidden)))

        if self.update_prompts:
            p_mlp = mlp.fc2(mlp.norm(mlp.drop1(mlp.act(mlp.fc1(blk.norm2(p_hat))))))
            prompts = prompts + blk.drop_path2(mlp.drop2(p_mlp))
        else:
            prompts = p_hat
        if not self.adapt:
            return x_out, prompts, None, None

        logits = q[:, :, :t_len] @ k[:, :, t_len:].transpose(-2, -1)  # raw: no scale, bias or softmax
        tokens_in = dropped[:, t_len:]
        proj_base = base[:, t_len:].reshape(bw, *blk.window_size, c)
        fc2_base = mlp.fc2.base(hidden)
        filters = self.task_filters
        tasks, skips = {}, {}
        for i, task in enumerate(self.tasks):
            tpc = tpc_feature(tokens_in, logits[:, :, i])
            u = self.prompt_norm(tokens_in + tpc).reshape(bw, *blk.window_size, c)
            z = attn.proj_drop(proj_base + filtered_term(proj, filters["proj"], u, task))
            x1_t = x + blk.drop_path1(self._from_windows(z, padded.shape, h, w))
            h_t = h_base + filtered_term(mlp.fc1, filters["fc1"], blk.norm2(x1_t), task)
            a_t = mlp.norm(mlp.drop1(mlp.act(h_t)))
            m_t = mlp.drop2(fc2_base + filtered_term(mlp.fc2, filters["fc2"], a_t, task))
            tasks[task] = x1_t + blk.drop_path2(m_t)
            skip = skip_windows(tpc, blk.window_size, self.skip_layout)
            skips[task] = self._from_windows(skip, padded.shape, h, w)
        return x_out, prompts, tasks, skips
