"""Outputs that appear whole or not at all (DESIGN D13).

A file is written to a hidden temporary sibling and moved over the target with ``os.replace`` only when
the writer finished, so a run that fails half-way leaves the earlier file byte for byte as it was.
:func:`atomic_folder` does the same for a folder of outputs, and :func:`check_output_path` refuses an
output that cannot or may not be written before any work starts.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Collection, Iterator

from .errors import OutputError


def _partial_name(folder: Path, stem: str, suffix: str = "") -> Path:
    """A fresh hidden name in ``folder``; the target's suffix stays last so writers pick the right format."""
    return folder / f".{stem}.{secrets.token_hex(4)}.partial{suffix}"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (same suffix, so writers pick the right format); on a clean
    exit it replaces ``target`` atomically, on an exception it is removed and ``target`` is untouched."""
    target = Path(target)
    created = topmost_missing(target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _partial_name(target.parent, target.stem, target.suffix)
    # Created with open(), not mkstemp, so the file gets the usual umask permissions instead of 0600.
    open(temporary, "x").close()
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
        if created is not None and not target.exists():
            remove_empty_tree(created)  # a failed first run leaves no empty folder behind


def topmost_missing(path: Path) -> Path | None:
    """The highest not-yet-existing folder on the way to ``path`` (None when ``path`` exists)."""
    top = None
    while not path.exists() and path != path.parent:
        top, path = path, path.parent
    return top


def remove_empty_tree(top: Path) -> None:
    """Remove ``top`` and its sub-folders when none of them holds a file."""
    for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()
    if top.is_dir() and not any(top.iterdir()):
        top.rmdir()


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, owned: Collection[str] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder to write ``target``'s outputs into; install them only on a clean exit.

    ``owned=None``: the finished folder replaces ``target`` as a whole. Otherwise only the entries named in
    ``owned`` are replaced (an owned entry the writer did not produce is removed, so no stale output of an
    earlier run is left beside the new ones) and every other entry of ``target`` (the user's files) stays.
    On an exception nothing of ``target`` changes."""
    target = Path(os.path.abspath(target))
    created = not target.exists()
    if owned is None:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = _partial_name(target.parent, target.name)
    else:
        # Staged inside the target: always on its file system and writable when the target is.
        target.mkdir(parents=True, exist_ok=True)
        staging = _partial_name(target, "outputs")
    staging.mkdir()
    try:
        yield staging
        if owned is None:
            _replace_folder(staging, target)
        else:
            _install_owned(staging, target, owned)
    except BaseException:
        if owned is not None and created and not any(p != staging for p in target.iterdir()):
            shutil.rmtree(target, ignore_errors=True)  # leave no empty folder behind a failed first run
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_folder(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    earlier = _partial_name(target.parent, target.name, ".old")
    os.replace(target, earlier)
    os.replace(staging, target)
    shutil.rmtree(earlier, ignore_errors=True)


def _install_owned(staging: Path, target: Path, owned: Collection[str]) -> None:
    # The earlier versions go into the staging folder first, so they are deleted with it at the end.
    earlier = staging / ".earlier"
    earlier.mkdir()
    for name in owned:
        if (target / name).exists():
            os.replace(target / name, earlier / name)
        if (staging / name).exists():
            os.replace(staging / name, target / name)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_path(path: str | os.PathLike, option: str, *, folder: bool, existing_ok: bool,
                      owned: Collection[str] = (), remedy: str | None = None) -> None:
    """Refuse, before any work, an output the command may not or cannot write (``OutputError`` naming
    ``option``): a file where a folder goes or the reverse, a parent that is a file, a folder without write
    permission, and unless ``existing_ok`` an existing output file, or for a folder the ``owned`` entries an
    earlier run left in it (other files in the folder are never in the way). ``remedy`` replaces the
    default advice "pass --overwrite to replace ..."."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise OutputError(f"{option} {path} exists and is {'a file' if folder else 'a folder'}; "
                          f"expected {'a folder' if folder else 'a file'}")
    anchor = _nearest_existing(path if folder else path.parent)
    if not anchor.is_dir():
        raise OutputError(f"{option} {path}: {anchor} is a file, so no folder can be created there")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: no permission to write in {anchor}")
    if existing_ok:
        return
    if not folder and path.exists():
        raise OutputError(f"{option} {path} already exists; {remedy or 'pass --overwrite to replace it'}")
    earlier = [name for name in owned if (path / name).exists()] if folder else []
    if earlier:
        raise OutputError(f"{option} {path} already holds {', '.join(earlier)} from an earlier run; "
                          f"{remedy or 'pass --overwrite to replace them (other files in it stay)'}")
