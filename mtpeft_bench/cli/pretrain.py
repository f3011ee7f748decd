"""``mtbench pretrain``: pretrain a built-in backbone (see :mod:`mtpeft_bench.pretraining`)."""

from __future__ import annotations

import dataclasses
import sys

import click

from mtpeft_bench.cli.options import new_or_old, old_spelling, require
from mtpeft_bench.errors import UserError


EXAMPLES = """\b
Examples:
  mtbench pretrain --config micro --seed 0 --steps 700 --output /tmp/swin_micro.safetensors \
      --set head=linear --set recon_weight=1 --set height_weight=1 --set group_weight=0.3   # the shipped micro
  mtbench pretrain --config mini --steps 10 --output /tmp/check.safetensors --check-card   # vs the shipped card
  mtbench pretrain --config mini --steps 400 --output /tmp/mini.safetensors --set mask_ratio=0.6
  mtbench run --method decoder_only --preset smoke --weights /tmp/swin_micro.safetensors
"""


@click.command(epilog=EXAMPLES)
@click.option("--config", "config_name", default="micro", show_default=True, help="micro | mini (backbone to pretrain).")
@click.option("--seed", type=int, default=0, show_default=True, help="Initialisation and data/mask seed.")
@click.option("--steps", type=int, default=None, help="Optimizer steps (default 3000).")
@click.option("--batch-size", type=int, default=None, help="Images per step (default 32).")
@click.option("--output", "-o", default=None,
              help="The .safetensors file to write (required; its log: .json, checkpoint: .ckpt/).")
@old_spelling("--out", "old_out", "--output")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any other pretraining setting: lr, head, recon_weight, height_weight, group_weight, "
                   "mask_ratio, label_weight, corpus_images, threads, ... (repeatable).")
@click.option("--checkpoint-every", type=int, default=200, show_default=True, help="Steps between checkpoints.")
@click.option("--check-card", is_flag=True, help="Compare the first losses with the shipped model card's.")
@click.option("--no-progress", is_flag=True, help="No progress bar (for log files).")
def pretrain(config_name, seed, steps, batch_size, output, old_out, sets, checkpoint_every, check_card, no_progress):
    """Pretrain a small Swin on the procedural corpus (deterministic on the CPU, resumable).

    Running the same command again resumes from the checkpoint beside --output.
    """
    output = require(new_or_old(output, old_out, "--output", "--out"), "--output")
    from mtpeft_bench.config import parse_sets
    from mtpeft_bench.pretraining.card import compare_first_losses
    from mtpeft_bench.pretraining.config import PretrainConfig
    from mtpeft_bench.pretraining.loop import pretrain as run_pretrain

    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    options = {"config": config_name, "seed": seed, "steps": steps, "batch_size": batch_size}
    for key, value in parse_sets(sets).items():
        if key not in fields or key in options:
            raise UserError(f"unknown pretraining setting '{key}' (settings: {', '.join(sorted(fields - set(options)))})")
        options[key] = value
    try:
        cfg = PretrainConfig(**{k: v for k, v in options.items() if v is not None})
    except TypeError as exc:
        raise UserError(f"invalid pretraining setting: {exc}") from None
    if checkpoint_every <= 0:
        raise UserError("--checkpoint-every must be positive")
    record = run_pretrain(cfg, output, progress=not no_progress, checkpoint_every=checkpoint_every)
    last = record["history"][-1] if record["history"] else {}
    # Every loss term the objective switched on (a term that is off is logged as exactly 0).
    terms = ", ".join(f"{k} {v:.4f}" for k, v in last.items()
                      if k not in ("step", "loss", "lr", "elapsed_s") and isinstance(v, float) and v != 0.0)
    click.echo(f"pretrained {cfg.backbone} for {record['steps_done']} steps in {record['train_seconds']:.0f} s; "
               f"final loss {last.get('loss', float('nan')):.4f}" + (f" ({terms})" if terms else ""))
    click.echo(f"weights: {record['weights']} (sha256 {record['sha256']})")
    if check_card:
        from mtpeft_bench.model.builtin_weights import card

        entry = card()["models"].get(cfg.backbone)
        if entry is None:
            raise UserError(f"the model card has no entry for {cfg.backbone}")
        if PretrainConfig(**{**entry["pretrain_config"], "steps": cfg.steps}) != cfg:
            raise UserError("--check-card needs the card's settings (only --steps may differ): "
                            f"{entry['command']}")
        result = compare_first_losses(record["history"], entry["first_losses"])
        verdict = "match" if result["match"] else "DIFFER from"
        click.echo(f"first {result['steps']} losses {verdict} the model card's "
                   f"(max relative difference {result['max_rel_diff']:.2e})")
        if not result["match"]:
            sys.exit(1)
