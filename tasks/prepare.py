"""``mtbench data prepare``: put a downloaded dataset under the data root (docs/protocol.md 1.1, 6).

Accepts the archive (``PASCAL_MT.tgz``, ``NYUD_MT.tgz``, ATRC's ``NYUDv2.tar.gz``), the extracted
folder, or a parent folder holding it, and leaves the dataset at ``<data root>/<usual name>``
(``PASCAL_MT``, ``NYUD_MT``, ``NYUDv2``), where ``--data-root`` / ``$MTBENCH_DATA`` finds it.
Archives are extracted into a temporary folder beside the destination and renamed into place,
so an interrupted extraction never leaves a half dataset under the final name; members that would
land outside the folder (absolute paths, ``..``, links out) are refused. A folder is copied
(hard links where the file system allows, so no extra space), or linked with ``symlink=True``.

Before an archive is extracted its SHA-256 is compared with the official one where that is known
(``tasks/reference/archives.yaml``; ``null`` there means no source publishes one) or with the
digest the caller gives (``--sha256``); a mismatch stops with one line naming the file. ``check=False``
(``--no-checksum``) skips the comparison.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from mtpeft_bench.atomic import make_folders, remove_empty_folders
from mtpeft_bench.digest import sha256_of
from mtpeft_bench.errors import UserError
from mtpeft_bench.tasks.roots import ARCHIVE_SUFFIXES, default_data_root, has_markers

# Progress lines ("extracting ...", "copying ...") go to the mtpeft_bench logger, which a caller may silence.
log = logging.getLogger(__name__)


def find_in_tree(top: Path, markers: tuple[str, ...], depth: int = 2) -> Path | None:
    """The first folder at most ``depth`` levels below ``top`` (``top`` included) that has every marker."""
    frontier = [top]
    for _ in range(depth + 1):
        nxt = []
        for folder in frontier:
            if has_markers(folder, markers):
                return folder
            try:
                nxt += sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
        frontier = nxt
    return None


def _safe_members(archive: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    dest = dest.resolve()
    members = []
    for member in archive.getmembers():
        target = (dest / member.name).resolve()
        if not str(target).startswith(str(dest) + os.sep) and target != dest:
            raise UserError(f"archive member {member.name!r} would be written outside {dest}; refusing to extract")
        if member.issym() or member.islnk():
            link = (target.parent / member.linkname).resolve()
            if not str(link).startswith(str(dest) + os.sep):
                raise UserError(f"archive member {member.name!r} links outside the archive; refusing to extract")
        if member.isdev():
            continue
        members.append(member)
    return members


def extract(archive_path: Path, dest: Path, progress: Callable[[str], None] = log.info) -> None:
    """Extract a .tgz/.tar.gz/.tar into ``dest`` (which exists), refusing unsafe members."""
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            members = _safe_members(archive, dest)
            progress(f"extracting {len(members)} entries of {archive_path.name} ...")
            kwargs: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            archive.extractall(dest, members=members, **kwargs)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"{archive_path} cannot be extracted ({exc}); download it again") from None


@lru_cache(maxsize=1)
def known_archives() -> dict[str, dict[str, Any]]:
    """``{archive file name: {dataset, url, sha256, digest_source}}`` from ``reference/archives.yaml``."""
    import yaml

    path = Path(__file__).resolve().parent / "reference" / "archives.yaml"
    return dict(yaml.safe_load(path.read_text())["archives"])


def official_sha256(archive_name: str) -> str | None:
    """The official SHA-256 (hex) of the archive called ``archive_name``, or None when unknown."""
    entry = known_archives().get(archive_name) or {}
    return entry.get("sha256")


def check_archive(path: Path, official_name: str, expected: str | None = None,
                  progress: Callable[[str], None] = log.info) -> str | None:
    """Compare the SHA-256 of the archive at ``path`` with ``expected`` (hex), else with the official
    digest of the dataset's archive ``official_name`` (``PASCAL_MT.tgz`` ...: a renamed download is
    still checked); return the digest, or None when there was nothing to compare with.

    Raises:
        UserError: the digests differ (one line naming the file and both digests).
    """
    given = expected is not None
    expected = (expected or official_sha256(official_name) or "").strip().lower() or None
    if expected is None:  # said after a successful prepare (a failing one answers in one line)
        return None
    progress(f"checking the SHA-256 of {path.name} ...")
    actual = sha256_of(path)
    if actual != expected:
        against = "the --sha256 given" if given else f"the official {official_name}"
        raise UserError(f"{path} differs from {against}: SHA-256 {actual}, expected {expected}; download it again "
                        "(or skip the check with --no-checksum)")
    return actual


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def prepare(plugin: Any, source: Path, data_root: Path | None, symlink: bool = False,
            progress: Callable[[str], None] = log.info, check: bool = True, sha256: str | None = None) -> Path:
    """Put ``plugin``'s dataset from ``source`` under ``data_root``; return the dataset folder.

    ``check``: compare an archive's SHA-256 with ``sha256`` (hex), else with the official digest
    when one is known (:func:`check_archive`).

    Raises:
        UserError: no data root, ``source`` missing or holding no such dataset, an archive whose
            digest differs, or the destination already exists.
    """
    name, markers = plugin.name, tuple(plugin.markers)
    data_root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    if data_root is None:
        raise UserError("no data root given: pass --data-root DIR or set MTBENCH_DATA")
    source = Path(source).expanduser()
    if not source.exists():
        raise UserError(f"{source} does not exist; pass the downloaded {plugin.archive} or its extracted folder")
    dest = data_root / plugin.folder_names[0]
    if dest.exists() or dest.is_symlink():
        raise UserError(f"{dest} already exists; `mtbench data verify {name} --data-root {data_root}` checks it "
                        "(remove it first to prepare again)")
    created = make_folders(data_root)
    try:
        if source.is_file():
            if not source.name.endswith(ARCHIVE_SUFFIXES):
                raise UserError(f"{source} is neither a folder nor a .tgz/.tar.gz/.tar archive")
            digest = check_archive(source, plugin.archive, sha256, progress) if check else None
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=data_root))
            try:
                extract(source, tmp, progress)
                found = find_in_tree(tmp, markers)
                if found is None:
                    raise UserError(f"{source} holds no {plugin.folder_names[0]} dataset "
                                    f"(no {', '.join(markers)} inside)")
                plugin.check_variant(found)
                os.replace(found, dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            if check and digest is None:
                progress(f"no official SHA-256 is known for {plugin.archive}; the content of {source.name} "
                         "was not checked against one")
        else:
            found = find_in_tree(source, markers)
            if found is None:
                raise UserError(f"{source} holds no {plugin.folder_names[0]} dataset (looked for {', '.join(markers)} "
                                "in it and two levels below)")
            plugin.check_variant(found)
            if symlink:
                dest.symlink_to(found.resolve(), target_is_directory=True)
            else:
                tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=data_root))
                try:
                    progress(f"copying {found} ...")
                    shutil.copytree(found, tmp / "data", copy_function=_link_or_copy)
                    os.replace(tmp / "data", dest)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        remove_empty_folders(created)  # a failure leaves no empty folder this call made
        raise
    return dest
