"""atomic_path / atomic_folder / check_output_path: outputs appear whole or not at all (DESIGN D13)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cli_checks import tree_digest

from steadydancer_core.atomic_output import atomic_folder, atomic_path, check_output_path
from steadydancer_core.errors import OutputError


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_atomic_path_keeps_the_earlier_file_on_failure_and_gives_the_usual_permissions(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("earlier")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["result.json"]
    with atomic_path(target) as temporary:
        assert temporary.suffix == ".json" and temporary.parent == tmp_path
        temporary.write_text("new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()  # not mkstemp's 0600


def test_atomic_folder_replaces_a_whole_folder_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "final"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    before = tree_digest(tmp_path)
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as staging:
            (staging / "new.bin").write_bytes(b"half")
            raise RuntimeError("export died")
    assert tree_digest(tmp_path) == before
    with atomic_folder(target) as staging:
        (staging / "new.bin").write_bytes(b"new")
    assert tree_digest(tmp_path) == {"final": "dir", "final/new.bin": tree_digest(target)["new.bin"]}
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~_umask()


def test_atomic_folder_with_owned_names_keeps_every_other_entry(tmp_path: Path) -> None:
    target = tmp_path / "out"
    (target / "frames").mkdir(parents=True)
    (target / "frames" / "0009.png").write_bytes(b"stale")
    (target / "summary.json").write_text("stale")
    (target / "mine.txt").write_text("user")
    with atomic_folder(target, owned=("frames", "summary.json", "preview.mp4")) as staging:
        (staging / "frames").mkdir()
        (staging / "frames" / "0000.png").write_bytes(b"new")
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["frames", "frames/0000.png", "mine.txt"]
    assert (target / "mine.txt").read_text() == "user"
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        with atomic_folder(fresh, owned=("frames",)):
            raise RuntimeError("failed first run")
    assert not fresh.exists()  # no empty folder left behind


@pytest.mark.parametrize("kind, make, message", [
    ("folder", "file", "exists and is a file; expected a folder"),
    ("file", "folder", "exists and is a folder; expected a file"),
    ("file", "file", "already exists; pass --overwrite to replace it"),
    ("folder", "earlier run", "already holds a.json from an earlier run"),
])
def test_check_output_path_refusals(kind: str, make: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "target"
    if make == "file":
        path.write_text("x")
    else:
        path.mkdir()
        if make == "earlier run":
            (path / "a.json").write_text("{}")
            (path / "notes.txt").write_text("not in the way")
    with pytest.raises(OutputError, match=message):
        check_output_path(path, "--out", folder=kind == "folder", existing_ok=False, owned=("a.json", "b.json"))


def test_atomic_path_failure_leaves_no_folder_it_created(tmp_path: Path) -> None:
    from steadydancer_core.atomic_output import atomic_path

    target = tmp_path / "out" / "nested" / "video.mp4"
    with pytest.raises(RuntimeError, match="the run failed"):
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("the run failed")
    assert list(tmp_path.iterdir()) == []  # out/nested/ was created for the run and is gone with it
    with atomic_path(target) as temporary:
        temporary.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
