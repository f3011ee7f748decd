"""``mtbench ls``: the registered methods and datasets and the presets, without importing torch."""

from __future__ import annotations

import click


@click.command()
@click.argument("what", type=click.Choice(["methods", "datasets", "presets", "all"]), default="all")
def ls(what):
    """List methods, datasets and presets (without importing torch)."""
    from mtpeft_bench.config import PRESET_HELP
    from mtpeft_bench.registry import dataset_registry, method_registry

    sections = []
    if what in ("methods", "all"):
        sections.append(("methods", method_registry.index()))
    if what in ("datasets", "all"):
        sections.append(("datasets", dataset_registry.index()))
    for title, index in sections:
        click.echo(f"{title}:")
        width = max((len(n) for n in index), default=0)
        for name in sorted(index):
            entry = index[name]
            origin = "" if entry.source == "builtin" else f"  [{entry.source}]"
            click.echo(f"  {name.ljust(width)}  {entry.description}{origin}")
    if what in ("presets", "all"):
        click.echo("presets:")
        for name, text in PRESET_HELP.items():
            click.echo(f"  {name.ljust(6)}  {text}")
