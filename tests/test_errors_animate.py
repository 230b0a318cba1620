"""``animate`` loses nothing and prints no traceback (DESIGN D10, D13): every bad input is one ``error:`` line
with exit code 2 before a weight is loaded, and an earlier output passed with ``--overwrite`` stays byte for
byte as it was when the run is refused."""
from __future__ import annotations

from pathlib import Path

import av
import pytest
import torch
from cli_checks import skip_if_root_can_write_anywhere, tree_digest
from safetensors.torch import save_file
from test_cli_animate import _args, _forbid_loading, assets  # noqa: F401  (fixture)

from steadydancer_core import cli_animate


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad_animate_inputs")
    (folder / "text.mp4").write_text("this is a text file, not a video\n")
    (folder / "text.png").write_text("not an image\n")
    (folder / "empty.png").write_bytes(b"")
    (folder / "empty.safetensors").write_bytes(b"")
    (folder / "truncated.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\": ")
    save_file({"patch_embedding.weight": torch.zeros(4, 36, 1, 2, 2)}, str(folder / "plain_wan.safetensors"))
    (folder / "bad.json").write_text("{not json")
    (folder / "a_file").write_text("a file where a folder should be")
    (folder / "no_images").mkdir()
    (folder / "folder.mp4").mkdir()
    with av.open(str(folder / "no_frames.mp4"), "w") as container:  # a valid container without one frame
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    return folder


# (row id, options replaced ({bad} = the bad-input folder), flags added, expected message)
ROWS = [
    ("missing image", {"--image": "{bad}/nowhere.png"}, (), "image file not found"),
    ("zero-byte image", {"--image": "{bad}/empty.png"}, (), "cannot read"),
    ("text file as image", {"--image": "{bad}/text.png"}, (), "cannot read"),
    ("missing poses", {"--poses": "{bad}/nowhere"}, (), "not found"),
    ("text file named .mp4", {"--poses": "{bad}/text.mp4"}, (), "text.mp4"),
    ("video with no frames", {"--poses": "{bad}/no_frames.mp4"}, (), "no_frames.mp4 has no video stream"),
    ("folder without images", {"--poses": "{bad}/no_images"}, (), "holds no images"),
    ("corrupt keypoint json", {"--poses": "{bad}/bad.json"}, (), "not a readable pose keypoint JSON"),
    ("corrupt negative video", {"--negative-poses": "{bad}/text.mp4"}, (), "text.mp4"),
    ("zero-byte dit", {"--dit": "{bad}/empty.safetensors"}, (), "--dit"),
    ("truncated dit", {"--dit": "{bad}/truncated.safetensors"}, (), "--dit"),
    ("plain Wan dit", {"--dit": "{bad}/plain_wan.safetensors"}, (), "not SteadyDancer"),
    # The cases: a wrong --dit is said in --dry-run even while --wan-dir is missing.
    ("corrupt dit, dry run, no wan", {"--dit": "{bad}/truncated.safetensors", "--wan-dir": "{bad}/none"},
     ("--dry-run",), "--dit"),
    ("plain Wan dit, dry run, no wan", {"--dit": "{bad}/plain_wan.safetensors", "--wan-dir": "{bad}/none"},
     ("--dry-run",), "not SteadyDancer"),
    ("too many frames", {"--frames": "99"}, (), "only 9 are given"),
    ("frames not a number", {"--frames": "lots"}, (), "frame count or 'all'"),
    ("segment frames not 4n+1", {}, ("--segment-frames", "80"), "4n+1"),
    ("size not a multiple of 16", {}, ("--size", "50x32"), "multiples of 16"),
    ("size malformed", {}, ("--size", "large"), "WIDTHxHEIGHT"),
    ("unknown device", {"--device": "gpu"}, (), "'gpu' is not a device"),
    ("output is a folder", {"--out": "{bad}/folder.mp4"}, (), "exists and is a folder"),
    ("output not mp4", {"--out": "{bad}/video.avi"}, (), "must end in .mp4"),
    ("output parent is a file", {"--out": "{bad}/a_file/video.mp4"}, (), "is a file"),
]


@pytest.mark.parametrize("replaced, flags, message", [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_bad_animate_input_is_one_line_and_keeps_earlier_output(assets, bad, tmp_path, monkeypatch, capsys,  # noqa: F811
                                                                replaced, flags, message):
    _forbid_loading(monkeypatch)
    out = tmp_path / "earlier" / "dance.mp4"
    out.parent.mkdir()
    out.write_bytes(b"an earlier video")
    (out.parent / "dance_frame0.png").write_bytes(b"an earlier frame")
    before = tree_digest(out.parent)
    args = _args(assets, out, "--overwrite", *flags)
    for option, value in replaced.items():
        args[args.index(option) + 1] = value.format(bad=bad)
    assert cli_animate.main(args) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and err.count("error:") == 1
    assert tree_digest(out.parent) == before


def test_animate_output_folder_without_write_permission(assets, tmp_path, monkeypatch, capsys):  # noqa: F811
    skip_if_root_can_write_anywhere()
    _forbid_loading(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert cli_animate.main(_args(assets, locked / "x.mp4")) == 2
        assert "no permission to write" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_animate_cuda_without_a_gpu_says_so(assets, tmp_path, monkeypatch, capsys):  # noqa: F811
    _forbid_loading(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = _args(assets, tmp_path / "x.mp4")
    args[args.index("--device") + 1] = "cuda"
    assert cli_animate.main(args) == 2
    assert "CUDA is not available on this machine" in capsys.readouterr().err
