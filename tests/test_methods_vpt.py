"""``vpt_shallow`` / ``vpt_deep``: counts on Swin-T by formula, and the encoder against a naive
per-window reference run through timm's own blocks (prompts only change the attention)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from helpers import run_cli
from helpers.baseline import DECODER, SUM_BC, SWIN_T_C, reference_features, swin_t_model, trainable
from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import get_method
from mtpeft_bench.tasks.base import config_from_mapping


def config(method="vpt_deep", **options):
    return config_from_mapping(get_method(method).Config, options, f"{method} method")


# -- parameter counts (Swin-T, 448 px, the 4 PASCAL tasks) -------------------------------------

def test_counts_on_swin_t(length=50):
    for method, expected in (("vpt_shallow", length * SWIN_T_C[0]), ("vpt_deep", length * SUM_BC)):
        _, groups, summary = swin_t_model(method, prompt_length=length)
        assert groups["method"]["trainable"] == groups["method"]["total"] == expected
        assert all(count == 0 for group, count in trainable(groups).items() if group not in ("method", "decoder"))
        assert summary["total_trainable"] == expected + DECODER


# -- a naive reference: timm's blocks with a per-window loop in place of their attention ----------

class NaivePromptAttention(nn.Module):
    """Wraps a timm WindowAttention: each window attends over [norm1(prompts of its image); window]
    with zero bias and mask on every prompt row and column; prompt outputs are averaged over the
    windows of their image (``order=official``: window row i takes, and gives back to, image i mod B)."""

    def __init__(self, attn, norm, order="per_image"):
        super().__init__()
        self.attn, self.norm, self.order = attn, norm, order
        self.prompts = None  # (B, L, C), set before the block runs
        self.prompt_out = None

    def forward(self, x, mask=None):
        a = self.attn
        p = self.norm(self.prompts)
        batch, length, c = p.shape
        windows, n = x.shape[0] // batch, x.shape[1]
        heads = a.num_heads
        table = a.relative_position_bias_table[a.relative_position_index.view(-1)].view(n, n, heads).permute(2, 0, 1)
        outs, prompt_out = [], torch.zeros_like(p)
        for row in range(x.shape[0]):
            image, window = divmod(row, windows)
            owner = image if self.order == "per_image" else row % batch
            seq = torch.cat([p[owner], x[row]])
            q, k, v = a.qkv(seq).view(length + n, 3, heads, -1).permute(1, 2, 0, 3)
            bias = torch.zeros(heads, length + n, length + n)
            bias[:, length:, length:] = table + (mask[window] if mask is not None else 0)
            o = ((q @ k.transpose(-1, -2)) * a.scale + bias).softmax(-1) @ v
            o = a.proj(o.transpose(0, 1).reshape(length + n, c))
            outs.append(o[length:])
            prompt_out[owner] += o[:length] / windows
        self.prompt_out = prompt_out
        return torch.stack(outs)


def build(method, seed=0, size=128, backbone_name="swin_micro", **options):
    from mtpeft_bench.model.backbone import create_backbone

    torch.manual_seed(seed)
    backbone, _ = create_backbone(backbone_name, (size, size), "none", 0.0)
    pristine = copy.deepcopy(backbone).eval()
    encoder = get_method(method)().build(backbone, ["a", "b"], config(method, **options)).eval()
    return encoder, pristine


def wrap_attention(pristine, order="per_image"):
    for stage in pristine.layers:
        for block in stage.blocks:
            block.attn = NaivePromptAttention(block.attn, block.norm1, order)


def test_micro_at_128_px_has_shifted_windows():
    _, pristine = build("vpt_deep", prompt_length=2)
    assert any(any(block.shift_size) for stage in pristine.layers for block in stage.blocks)


def test_deep_prompts_are_extra_keys_and_values_of_every_window():
    encoder, pristine = build("vpt_deep", prompt_length=3)
    wrap_attention(pristine)
    images = torch.randn(2, 3, 128, 128)
    for stage, prompts in zip(pristine.layers, encoder.prompts):
        assert prompts.shape[0] == len(stage.blocks)
        for block, prompt in zip(stage.blocks, prompts):
            block.attn.prompts = prompt.detach().unsqueeze(0).expand(2, -1, -1)
    with torch.no_grad():
        got = encoder(images)
        want = reference_features(pristine, images)
    for g, w in zip(got["a"], want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert all(g is h for g, h in zip(got["a"], got["b"]))  # shared by the tasks


def shallow_reference(pristine, prompt, images):
    """VPT-shallow by hand: the prompt stream updated by each block and merged at each PatchMerging."""
    x = pristine.patch_embed(images)
    p = prompt.expand(images.shape[0], -1, -1)
    feats = []
    for s, stage in enumerate(pristine.layers):
        if s > 0:
            x = stage.downsample(x)
            feats.append(x)
            ds = stage.downsample
            p = ds.reduction(ds.norm(torch.cat([p, p, p, p], dim=-1)))
        for block in stage.blocks:
            block.attn.prompts = p
            x = block(x)
            p = p + block.attn.prompt_out
            p = p + block.mlp(block.norm2(p))
    feats.append(x)
    return [f.permute(0, 3, 1, 2) for f in feats]


@pytest.mark.parametrize("order", ["per_image", "official"])
def test_shallow_prompt_stream_matches_the_reference(order):
    encoder, pristine = build("vpt_shallow", prompt_length=3, window_order=order)
    wrap_attention(pristine, order)
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        got = encoder(images)
        want = shallow_reference(pristine, encoder.prompts[0][0].detach(), images)
    for g, w in zip(got["a"], want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vpt_shallow", "vpt_deep"])
def test_swin_t_matches_the_reference(method):
    encoder, pristine = build(method, size=224, backbone_name="swin_tiny_patch4_window7_224", prompt_length=2)
    wrap_attention(pristine)
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        got = encoder(images)["a"]
        if method == "vpt_shallow":
            want = shallow_reference(pristine, encoder.prompts[0][0], images)
        else:
            for stage, prompts in zip(pristine.layers, encoder.prompts):
                for block, prompt in zip(stage.blocks, prompts):
                    block.attn.prompts = prompt.unsqueeze(0)
            want = reference_features(pristine, images)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_official_window_order_mixes_the_images_of_a_batch():
    encoder, _ = build("vpt_shallow", prompt_length=3, window_order="official")
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        alone = encoder(images[:1])["a"][-1]
        together = encoder(images)["a"][-1][:1]
        encoder.order = "per_image"
        per_image = encoder(images)["a"][-1][:1]
    assert not torch.allclose(alone, together, atol=1e-4)
    torch.testing.assert_close(per_image, alone, rtol=1e-4, atol=1e-5)


def test_only_the_prompts_train_and_get_gradients():
    for method in ("vpt_shallow", "vpt_deep"):
        encoder, _ = build(method, size=64, prompt_length=2)
        encoder.train()
        names = [n for n, p in encoder.named_parameters() if p.requires_grad]
        assert names and all(n.startswith("prompts.") for n in names)
        loss = sum(f.square().mean() for f in encoder(torch.randn(2, 3, 64, 64))["a"])
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.prompts)


def test_runs_on_swin_mini():
    from mtpeft_bench.model.backbone import create_backbone

    for method in ("vpt_shallow", "vpt_deep"):
        backbone, _ = create_backbone("swin_mini", (64, 64), "none", 0.0)
        encoder = get_method(method)().build(backbone, ["a"], config(method, prompt_length=4))
        with torch.no_grad():
            feats = encoder(torch.randn(1, 3, 64, 64))["a"]
        assert [f.shape[1] for f in feats] == encoder.out_channels


@pytest.mark.parametrize("options, message", [
    ({"prompt_length": 0}, "prompt_length must be a positive integer"),
    ({"prompt_length": True}, "prompt_length must be a positive integer"),
    ({"dropout": 1.0}, "dropout must be in [0, 1)"),
    ({"window_order": "mixed"}, "window_order must be one of per_image, official"),
    ({"tokens": 5}, "unknown vpt_deep method option 'tokens'"),
])
def test_invalid_options_are_one_line_errors(options, message):
    with pytest.raises(UserError) as info:
        config("vpt_deep", **options)
    assert message in str(info.value) and "\n" not in str(info.value)


TINY = ["--preset", "smoke", "--tasks", "semseg,depth", "--set", "data.num_train=8", "--set", "data.num_val=4",
        "--set", "batch_size=4", "--epochs", "1", "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vpt_shallow", "vpt_deep"])
def test_smoke_run_on_synth(method, capsys, tmp_path):
    code, _, err = run_cli(["run", "--method", method, "--out", str(tmp_path), *TINY,
                            "--set", "method.prompt_length=4"], capsys)
    assert code == 0, err
    (record,) = [json.loads(p.read_text()) for p in tmp_path.rglob("*.json")]
    assert record["status"] == "completed" and record["method"] == method
    assert record["method_info"]["prompt_length"] == 4
