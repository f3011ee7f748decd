"""`mtbench data prepare` (archive, folder, parent, symlink) and `mtbench data verify` on miniature layouts."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mtpeft_bench.cli import main
from mtpeft_bench.tasks.miniature import write_nyud, write_pascal


def _cli(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _tgz(folder: Path, archive: Path, top: str) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=top)
    return archive


def test_prepare_from_archive_then_verify(tmp_path, capsys):
    src = write_nyud(tmp_path / "src" / "NYUD_MT")
    archive = _tgz(src, tmp_path / "NYUD_MT.tgz", "NYUD_MT")
    code, out, _ = _cli(capsys, "data", "prepare", "nyud", "--from", str(archive), "--data-root", str(tmp_path / "d"))
    assert code == 0 and "ready in" in out
    assert (tmp_path / "d" / "NYUD_MT" / "gt_sets" / "val.txt").is_file()
    assert not [p for p in (tmp_path / "d").iterdir() if p.name.startswith(".")]  # no temporary left behind
    code, out, _ = _cli(capsys, "data", "verify", "nyud", "--data-root", str(tmp_path / "d"), "--no-progress")
    assert code == 0 and "nyud: OK" in out and "official split has 795" in out
    code, out, _ = _cli(capsys, "data", "verify", "nyud", "--data-root", str(tmp_path / "d"), "--no-progress", "--strict")
    assert code == 1
    # preparing again refuses to overwrite
    code, _, err = _cli(capsys, "data", "prepare", "nyud", "--from", str(archive), "--data-root", str(tmp_path / "d"))
    assert code == 2 and "already exists" in err


def test_prepare_from_a_parent_folder_and_by_symlink(tmp_path, capsys, monkeypatch):
    write_pascal(tmp_path / "downloads" / "extracted" / "PASCAL_MT")
    monkeypatch.setenv("MTBENCH_DATA", str(tmp_path / "d"))
    code, out, _ = _cli(capsys, "data", "prepare", "pascal_mt", "--from", str(tmp_path / "downloads"))
    assert code == 0 and (tmp_path / "d" / "PASCAL_MT" / "JPEGImages").is_dir()
    code, out, _ = _cli(capsys, "data", "verify", "pascal_mt", "--no-progress")
    assert code == 0 and "pascal_mt: OK" in out
    code, out, _ = _cli(capsys, "data", "prepare", "pascal_mt", "--from", str(tmp_path / "downloads" / "extracted"),
                        "--data-root", str(tmp_path / "e"), "--symlink")
    assert code == 0 and (tmp_path / "e" / "PASCAL_MT").is_symlink()


def test_prepare_refuses_bad_sources(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = _cli(capsys, "data", "prepare", "nyud", "--from", str(tmp_path / "empty"), "--data-root",
                        str(tmp_path / "d"))
    assert code == 2 and "holds no NYUD_MT dataset" in err
    evil = tmp_path / "evil.tgz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    code, _, err = _cli(capsys, "data", "prepare", "nyud", "--from", str(evil), "--data-root", str(tmp_path / "d"))
    assert code == 2 and "outside" in err and not (tmp_path / "outside.txt").exists()
    code, _, err = _cli(capsys, "data", "prepare", "synth", "--from", str(tmp_path), "--data-root", str(tmp_path / "d"))
    assert code == 2 and "generated" in err


def test_verify_names_every_broken_file(tmp_path, capsys):
    root = write_pascal(tmp_path / "d" / "PASCAL_MT")
    jpeg = root / "JPEGImages" / "2008_000002.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:150])  # truncated
    os.remove(root / "normals_distill" / "2008_000003.png")  # missing
    (root / "human_parts" / "2008_000004.mat").write_bytes(b"not a mat file")  # corrupt
    np.save(root / "semseg" / "VOC12" / "bogus.npy", np.zeros(2))  # unrelated files are ignored
    code, out, _ = _cli(capsys, "data", "verify", "pascal_mt", "--data-root", str(tmp_path / "d"), "--no-progress")
    assert code == 1
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    assert sum("JPEGImages/2008_000002.jpg: cannot be decoded" in p for p in problems) == 1  # once, not per task
    assert any("normals_distill/2008_000003.png: file is missing" in p for p in problems)
    assert any("human_parts/2008_000004.mat: is not a readable MATLAB file" in p for p in problems)
    assert "problem(s)" in out.splitlines()[-1]


def test_verify_reports_wrong_sizes_and_values_for_nyud(tmp_path, capsys):
    root = write_nyud(tmp_path / "NYUD_MT")
    np.save(root / "depth" / "0005.npy", np.ones((5, 5), np.float32))
    normals = np.load(root / "normals" / "0006.npy")
    normals[0, 0] = (3.0, 0.0, 0.0)
    np.save(root / "normals" / "0006.npy", normals)
    (root / "gt_sets" / "train.txt").write_text("")
    code, out, _ = _cli(capsys, "data", "verify", "nyud", "--data-root", str(tmp_path), "--no-progress")
    assert code == 1
    assert "depth/0005.npy: depth is 5x5, its image 0005.jpg is 24x32" in out
    assert "normals/0006.npy: normals have components outside [-1, 1]" in out
    assert "gt_sets/train.txt: split file lists no image id" in out
