"""The registries: discovery without imports, did-you-mean errors, entry points."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import Registry, dataset_registry, method_registry, register_method


def test_builtin_plugins_are_found_by_source_scan():
    names = method_registry.names()
    assert {"full", "decoder_only"} <= set(names)
    assert {"synth", "nyud", "pascal_mt"} <= set(dataset_registry.names())
    entry = method_registry.index()["full"]
    assert entry.module == "mtpeft_bench.methods.full"
    assert entry.description  # the class docstring's first line


def test_listing_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        from mtpeft_bench.registry import method_registry, dataset_registry
        method_registry.index(); dataset_registry.index()
        from mtpeft_bench.cli import main
        try:
            main(["ls"])
        except SystemExit:
            pass
        assert "torch" not in sys.modules, "torch was imported"
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "full" in result.stdout and "synth" in result.stdout


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UserError) as info:
        method_registry.get("ful")
    message = str(info.value)
    assert message.startswith("unknown method 'ful'; did you mean 'full'?")
    assert "decoder_only" in message  # the list of what exists


def test_get_imports_and_returns_the_class():
    cls = method_registry.get("decoder_only")
    assert cls.name == "decoder_only"
    assert cls.__module__ == "mtpeft_bench.methods.decoder_only"


def test_invalid_names_are_rejected():
    for bad in ("Full", "lora_", "1x", "a-b"):
        with pytest.raises(ValueError):
            register_method(bad)


def test_runtime_registration_and_duplicates():
    registry = Registry("thing", "mtpeft_bench.nonexistent", "mtpeft_bench.things", "register_thing")

    @registry.register("alpha")
    class Alpha:
        """The first thing."""

    assert registry.get("alpha") is Alpha
    assert registry.index()["alpha"].description == "The first thing."

    with pytest.raises(ValueError, match="registered twice"):
        @registry.register("alpha")
        class Other:
            pass


def test_entry_point_plugin(tmp_path, monkeypatch):
    """An out-of-tree plugin, installed as a distribution with an entry point, is listed and loads."""
    module = tmp_path / "mtbench_ep_plugin.py"
    module.write_text(textwrap.dedent('''
        from mtpeft_bench.methods.full import FullFineTuning
        from mtpeft_bench.registry import register_method

        @register_method("ep_full")
        class EntryPointFull(FullFineTuning):
            """Full fine-tuning, registered from an entry point."""
    '''))
    dist = tmp_path / "mtbench_ep_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mtbench-ep-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mtpeft_bench.methods]\nep_full = mtbench_ep_plugin:EntryPointFull\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    method_registry.refresh()
    try:
        entry = method_registry.index()["ep_full"]
        assert entry.source == "entry-point mtbench-ep-plugin"
        assert entry.description == "Full fine-tuning, registered from an entry point."
        assert "mtbench_ep_plugin" not in sys.modules  # listed without importing
        cls = method_registry.get("ep_full")
        assert cls.__name__ == "EntryPointFull"
    finally:
        method_registry.refresh()
