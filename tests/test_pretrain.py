"""Pretraining: the corpus is deterministic and disjoint from synth; a short run is reproducible
and resumes exactly; bad settings are refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtpeft_bench.cli import main
from mtpeft_bench.errors import UserError
from mtpeft_bench.pretraining import corpus
from mtpeft_bench.pretraining.config import PretrainConfig
from mtpeft_bench.pretraining.losses import pretrain_losses
from mtpeft_bench.pretraining.loop import pretrain
from mtpeft_bench.pretraining.model import PretrainModel
from mtpeft_bench.tasks.synth.render import render_scene
from mtpeft_bench.tasks.synth.sampling import sample_rng, sample_scene
from mtpeft_bench.tasks.synth.scene import PRIMITIVE_KINDS


TINY = dict(config="micro", steps=4, batch_size=4, corpus_images=8, warmup_steps=2)
NUM_LOGITS = sum(size for _, size in corpus.LABELS.values())


def test_corpus_images_depend_only_on_seed_and_index():
    config = corpus.CorpusConfig(num_images=3, height=24, width=32)
    whole = corpus.generate_corpus(config, progress=False, workers=1)
    image, albedo, labels = corpus.render_corpus_image(config, 2)
    assert np.array_equal(whole["images"][2], image) and np.array_equal(whole["albedo"][2], albedo)
    # the albedo has no shading: the lit image differs from it
    assert np.abs(image.astype(int) - albedo.astype(int)).mean() > 3
    assert whole["count"][2] == labels["count"]
    other = corpus.generate_corpus(corpus.CorpusConfig(num_images=3, height=24, width=32, seed=1), progress=False,
                                   workers=1)
    assert not np.array_equal(whole["images"], other["images"])


def test_corpus_is_not_synth():
    """Same seed and index, another seed stream and generator: no corpus image is a synth image."""
    config = corpus.CorpusConfig(num_images=4, height=24, width=32)
    images = corpus.generate_corpus(config, progress=False, workers=1)["images"].astype(np.int16)
    for split in ("train", "val"):
        for i in range(4):
            scene = sample_scene(sample_rng(0, split, i))
            rendered = np.round(render_scene(scene, 24, 32)["image"] * 255).astype(np.int16)
            assert all(np.abs(rendered - img).mean() > 5 for img in images)
    # the corpus has no room: its walls are 40 m away, synth's at most 4 m
    scene, _ = corpus.sample_corpus_scene(corpus.corpus_rng(0, 0))
    assert scene.room.width == corpus.FIELD and scene.room.width > 7


def test_corpus_labels_describe_the_scene():
    for index in range(6):
        scene, labels = corpus.sample_corpus_scene(corpus.corpus_rng(3, index))
        kinds = {p.kind for p in scene.primitives}
        assert labels["kinds"] == [int(k in kinds) for k in PRIMITIVE_KINDS]
        assert 1 <= sum(labels["families"]) <= labels["count"] <= corpus.MAX_OBJECTS
        assert len(scene.primitives) >= labels["count"]
        assert 0 <= labels["palette"] < len(corpus.PALETTES) and 0 <= labels["sun"] < corpus.SUN_BINS


def _labels(batch: int) -> dict[str, torch.Tensor]:
    return {name: torch.zeros(batch, size, dtype=torch.long) if kind == "multi_hot" else torch.zeros(batch, dtype=torch.long)
            for name, (kind, size) in corpus.LABELS.items()}


def test_reconstruction_loss_counts_masked_pixels_only():
    """A model whose reconstruction equals the input on masked squares has zero MIM loss, whatever it
    predicts elsewhere; without a mask there is no MIM term."""
    images = torch.randn(2, 3, 64, 64)
    albedo = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[:, :8] = True

    class Perfect(torch.nn.Module):
        def forward(self, x, m):
            out = x.clone()
            out[:, :, 32:] = 7.0  # wrong only where nothing is masked
            return {"pixels": out, "albedo": albedo + 0.5, "logits": torch.zeros(2, NUM_LOGITS)}

    cfg = PretrainConfig(mask_ratio=0.5)
    losses = pretrain_losses(Perfect(), images, mask, albedo, _labels(2), cfg)
    assert losses["mim"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["albedo"].item() == pytest.approx(0.5)
    assert losses["loss"].item() == pytest.approx(cfg.albedo_weight * 0.5 + cfg.label_weight * losses["labels"].item())
    mask[:, 12:] = True  # now the wrong half counts too
    assert pretrain_losses(Perfect(), images, mask, albedo, _labels(2), cfg)["mim"].item() > 1.0
    assert pretrain_losses(Perfect(), images, None, albedo, _labels(2), cfg)["mim"].item() == 0.0


def test_mask_token_replaces_masked_patches_only():
    from mtpeft_bench.model.backbone import create_backbone

    torch.manual_seed(0)
    backbone, _ = create_backbone("swin_micro", (64, 64), "none")
    model = PretrainModel(backbone, NUM_LOGITS).eval()
    images = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, :2, :2] = True  # an 8-px square in the corner
    changed = images.clone()
    changed[..., :8, :8] += 5.0  # only inside the masked square
    with torch.no_grad():
        a, b, c = model(images, mask), model(changed, mask), model(changed, torch.zeros_like(mask))
    for key in ("pixels", "albedo", "logits"):
        assert torch.allclose(a[key], b[key])
        assert not torch.allclose(a[key], c[key])
    assert a["albedo"].shape == (1, 3, 64, 64) and model(images)["pixels"] is None


def test_batches_replay_by_step():
    cfg = PretrainConfig(**{**TINY, "mask_ratio": 0.5})
    arrays = corpus.load_corpus(corpus.CorpusConfig(num_images=cfg.corpus_images), progress=False)
    from mtpeft_bench.pretraining.batches import CorpusBatches

    data = CorpusBatches(arrays, cfg)
    first, again, other = data.batch(3), data.batch(3), data.batch(4)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1]) and torch.equal(first[2], again[2])
    assert not torch.equal(first[0], other[0]) or not torch.equal(first[1], other[1])
    assert first[0].shape == first[2].shape == (4, 3, 64, 64)
    assert first[1].float().mean().item() == pytest.approx(0.5)  # the exact mask ratio
    assert CorpusBatches(arrays, PretrainConfig(**TINY)).batch(3)[1] is None  # mask_ratio 0: no masking


def test_short_pretraining_is_reproducible_and_resumes(tmp_path):
    cfg = PretrainConfig(**TINY)
    first = pretrain(cfg, tmp_path / "a.safetensors", progress=False, checkpoint_every=2)
    again = pretrain(cfg, tmp_path / "b.safetensors", progress=False, checkpoint_every=2)
    losses = [h["loss"] for h in first["history"]]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert [h["loss"] for h in again["history"]] == losses
    assert again["sha256"] == first["sha256"]

    # interrupted after 3 steps, then the same call resumes from the checkpoint
    stopped = pretrain(cfg, tmp_path / "c.safetensors", progress=False, checkpoint_every=2, stop_after=3)
    assert stopped["status"] == "stopped" and not (tmp_path / "c.safetensors").exists()
    resumed = pretrain(cfg, tmp_path / "c.safetensors", progress=False, checkpoint_every=2)
    assert [h["loss"] for h in resumed["history"]] == losses
    assert resumed["sha256"] == first["sha256"]

    other = pretrain(PretrainConfig(**{**TINY, "seed": 1, "mask_ratio": 0.5}), tmp_path / "d.safetensors",
                     progress=False)
    assert [h["loss"] for h in other["history"]] != losses
    log = json.loads((tmp_path / "a.json").read_text())
    assert log["config"]["seed"] == 0 and log["sha256"] == first["sha256"]


def test_exported_weights_load_with_weights_path(tmp_path):
    from safetensors.torch import load_file

    from mtpeft_bench.model.backbone import create_backbone

    pretrain(PretrainConfig(**{**TINY, "steps": 1}), tmp_path / "w.safetensors", progress=False)
    stored = load_file(str(tmp_path / "w.safetensors"))
    assert all(v.dtype == torch.float16 for v in stored.values())
    backbone, provenance = create_backbone("swin_micro", (64, 64), str(tmp_path / "w.safetensors"))
    assert provenance["source"] == "file"
    name = "layers.2.blocks.1.mlp.fc1.weight"
    assert torch.equal(backbone.state_dict()[name], stored[name].float())


def test_resume_with_other_settings_is_refused(tmp_path):
    pretrain(PretrainConfig(**TINY), tmp_path / "a.safetensors", progress=False, stop_after=2, checkpoint_every=2)
    with pytest.raises(UserError, match="other settings .*lr"):
        pretrain(PretrainConfig(**{**TINY, "lr": 5e-4}), tmp_path / "a.safetensors", progress=False)


@pytest.mark.parametrize("args, message", [
    (["--config", "nano"], "unknown pretraining config 'nano'"),
    (["--set", "bogus=1"], "unknown pretraining setting 'bogus'"),
    (["--set", "mask_ratio=1.5"], "mask_ratio must be in [0, 1)"),
    (["--steps", "0"], "steps must be positive"),
    (["--output", "x.pt"], "must name a .safetensors file"),
])
def test_bad_pretrain_input_is_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["pretrain", "--output", "w.safetensors", *args] if "--output" not in args else ["pretrain", *args]
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert len([line for line in err.splitlines() if line.strip()]) == 1 and message in err


def test_shading_target_is_image_over_albedo():
    """Synthetic arrays: an image half as bright as its albedo in linear light has shading 0.5; a
    black albedo gives 0; without shading_weight the target has the three albedo channels only."""
    from mtpeft_bench.pretraining.batches import CorpusBatches

    n = 4
    albedo = np.full((n, 96, 128, 3), 200, np.uint8)
    albedo[:, :, :10] = 0
    image = np.round(255 * ((200 / 255) ** 2.2 * 0.5) ** (1 / 2.2) * np.ones((n, 96, 128, 3))).astype(np.uint8)
    arrays = {"images": image, "albedo": albedo, **{k: np.zeros((n, s) if kind == "multi_hot" else n, np.int64)
                                                    for k, (kind, s) in corpus.LABELS.items()}}
    cfg = PretrainConfig(**{**TINY, "shading_weight": 1.0})
    target = CorpusBatches(arrays, PretrainConfig(**{**cfg.to_dict(), "config": "mini"})).batch(0)[2]
    assert target.shape == (4, 4, 64, 64)
    shading = CorpusBatches(arrays, cfg)._shading(np.arange(n), np.zeros(n, bool))
    assert shading.shape == (4, 1, 64, 64)
    assert shading[..., 20:].mean().item() == pytest.approx(0.5, abs=0.01)
    assert shading[..., :3].abs().max().item() < 1e-6
    assert CorpusBatches(arrays, PretrainConfig(**TINY)).batch(0)[2].shape[1] == 3


def test_geometry_maps_describe_the_scene():
    """Height is 0 on the ground and positive on objects, the sky has no height; every object id is
    one of the scene's objects, and a compound object (several primitives) has one id."""
    config = corpus.CorpusConfig(num_images=6, height=48, width=64)
    for index in range(6):
        maps = corpus.render_corpus_geometry(config, index)
        _, labels = corpus.sample_corpus_scene(corpus.corpus_rng(0, index))
        height, obj = maps["height"], maps["object"]
        assert height.shape == obj.shape == (48, 64)
        assert np.array_equal(height == corpus.SKY, obj == 0)
        assert (obj == 1).any()  # the ground is always in view (the sky not when the camera looks down)
        assert height[obj == 1].max() <= 1  # the ground is flat at y = 0
        assert set(np.unique(obj)) <= set(range(2 + labels["count"]))
        if (obj >= 2).any():
            assert height[obj >= 2].mean() > 5  # objects stand above the ground
    arrays = corpus.load_geometry(corpus.CorpusConfig(num_images=4), progress=False)
    assert arrays["height"].shape == arrays["object"].shape == (4, 96, 128)
    assert np.array_equal(corpus.load_geometry(corpus.CorpusConfig(num_images=4), progress=False)["object"],
                          arrays["object"])  # from the cache


def test_grouping_loss_rewards_separated_objects():
    """Embeddings that give each object its own direction score lower than random ones; cells that
    mix several objects are no anchors; a batch without any positive pair costs nothing."""
    from mtpeft_bench.pretraining.losses import grouping_loss

    objects = torch.zeros(2, 1, 16, 16)
    objects[:, :, 8:] = 1
    objects[:, :, :8, 8:] = 2
    one_hot = torch.nn.functional.one_hot(objects.long().squeeze(1), 4).permute(0, 3, 1, 2).float()
    separated = torch.nn.functional.avg_pool2d(one_hot, 4)  # (2, 4, 4, 4): each cell its object's axis
    torch.manual_seed(0)
    assert grouping_loss(separated, objects, 0.1) < grouping_loss(torch.randn(2, 4, 4, 4), objects, 0.1)
    assert torch.isfinite(grouping_loss(torch.randn(2, 4, 4, 4), objects, 0.1))
    assert one_hot.shape == (2, 4, 16, 16)
    single = torch.zeros(1, 1, 16, 16)
    single[:, :, :, 8:] = 2  # two objects, one half each: a 1x2 grid has one cell per object
    assert grouping_loss(torch.randn(1, 4, 1, 2), single, 0.1).item() == 0.0


def test_pretraining_with_reconstruction_height_and_grouping(tmp_path):
    """The optional dense terms and the linear head train, are logged and reproducible; the backbone
    they export loads like any other."""
    from mtpeft_bench.model.backbone import create_backbone

    cfg = PretrainConfig(**{**TINY, "steps": 2, "head": "linear", "recon_weight": 1.0, "height_weight": 1.0,
                            "group_weight": 0.3})
    first = pretrain(cfg, tmp_path / "a.safetensors", progress=False)
    again = pretrain(cfg, tmp_path / "b.safetensors", progress=False)
    assert first["sha256"] == again["sha256"]
    for h in first["history"]:
        assert all(np.isfinite(h[k]) and h[k] > 0 for k in ("recon", "height", "group", "albedo", "labels"))
    backbone, provenance = create_backbone("swin_micro", (64, 64), str(tmp_path / "a.safetensors"))
    assert provenance["source"] == "file"
    plain = pretrain(PretrainConfig(**{**TINY, "steps": 2}), tmp_path / "c.safetensors", progress=False)
    assert all(h["recon"] == h["height"] == h["group"] == 0 for h in plain["history"])
    with pytest.raises(UserError, match="head must be one of"):
        PretrainConfig(**{**TINY, "head": "mlp"})
