"""``mtbench data prepare`` checks an archive's SHA-256 (the official digest where known, or
``--sha256``), names the file that differs, and ``--no-checksum`` skips the check; on miniature archives
whose digests the tests compute themselves."""

from __future__ import annotations

import hashlib
import re
import tarfile

import pytest

from helpers import error_lines, run_cli
from mtpeft_bench.registry import dataset_registry, get_dataset
from mtpeft_bench.tasks.miniature import write_nyud
from mtpeft_bench.tasks.prepare import known_archives


def _archive(tmp_path, name, seed):
    src = write_nyud(tmp_path / f"src{seed}" / "NYUD_MT", seed=seed)
    path = tmp_path / f"a{seed}" / name
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname="NYUD_MT")
    return path


def one_error_line(err):
    """The one error line (progress lines such as "checking the SHA-256 ..." may precede it)."""
    (line,) = [line for line in error_lines(err) if line.startswith("mtbench: error:")]
    return line


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def official(tmp_path, monkeypatch):
    """A miniature NYUD_MT.tgz standing in for the official archive, with its digest made 'known'."""
    good = _archive(tmp_path, "NYUD_MT.tgz", seed=0)
    digest = _sha256(good)
    monkeypatch.setattr("mtpeft_bench.tasks.prepare.official_sha256",
                        lambda name: digest if name == "NYUD_MT.tgz" else None)
    return good


def test_every_downloaded_dataset_has_its_archive_listed_with_a_digest_or_none():
    archives = known_archives()
    for name in dataset_registry.names():
        cls = get_dataset(name)
        if cls.requires_root and hasattr(cls, "layout"):
            assert cls.archive in archives, name
            assert archives[cls.archive]["dataset"] == name
    for entry in archives.values():
        assert entry["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
        assert (entry["sha256"] is None) == (entry["digest_source"] is None)  # a digest names its source


def test_the_official_archive_passes_and_a_different_one_is_named(official, tmp_path, capsys):
    root = tmp_path / "d"
    other = _archive(tmp_path, "NYUD_MT.tgz", seed=1)  # same layout, other bytes
    code, _, err = run_cli(["data", "prepare", "nyud", "--from", str(other), "--data-root", str(root)], capsys)
    line = one_error_line(err)
    assert code == 2 and str(other) in line and "differs from the official NYUD_MT.tgz" in line
    assert _sha256(other) in line and _sha256(official) in line
    assert not root.exists()  # nothing extracted, no folder left behind
    code, out, err = run_cli(["data", "prepare", "nyud", "--from", str(official), "--data-root", str(root)], capsys)
    assert code == 0 and "ready in" in out, err


def test_a_renamed_download_is_checked_against_its_datasets_archive(official, tmp_path, capsys):
    other = _archive(tmp_path, "download (1).tgz", seed=1)
    code, _, err = run_cli(["data", "prepare", "nyud", "--from", str(other), "--data-root", str(tmp_path / "d")], capsys)
    assert code == 2 and "differs from the official NYUD_MT.tgz" in one_error_line(err)


def test_no_checksum_skips_the_check(official, tmp_path, capsys):
    other = _archive(tmp_path, "NYUD_MT.tgz", seed=1)
    code, out, err = run_cli(["data", "prepare", "nyud", "--from", str(other), "--data-root", str(tmp_path / "d"),
                              "--no-checksum"], capsys)
    assert code == 0 and "ready in" in out, err


def test_a_given_sha256_is_checked_where_no_official_one_is_known(tmp_path, capsys):
    archive = _archive(tmp_path, "NYUD_MT.tgz", seed=0)
    digest = _sha256(archive)
    wrong = digest[::-1]
    code, _, err = run_cli(["data", "prepare", "nyud", "--from", str(archive), "--data-root", str(tmp_path / "d"),
                            "--sha256", wrong], capsys)
    assert code == 2 and "differs from the --sha256 given" in one_error_line(err)
    code, out, err = run_cli(["data", "prepare", "nyud", "--from", str(archive), "--data-root", str(tmp_path / "d"),
                              "--sha256", digest.upper()], capsys)
    assert code == 0 and "ready in" in out, err


@pytest.mark.parametrize("extra, message", [
    (["--sha256", "abc"], "--sha256 must be 64 hexadecimal digits"),
    (["--sha256", "0" * 64, "--no-checksum"], "contradict"),
])
def test_bad_checksum_options_are_one_line(tmp_path, capsys, extra, message):
    archive = _archive(tmp_path, "NYUD_MT.tgz", seed=0)
    code, _, err = run_cli(["data", "prepare", "nyud", "--from", str(archive), "--data-root", str(tmp_path / "d"),
                            *extra], capsys)
    assert code == 2 and message in one_error_line(err)
