"""``python -m steadydancer_core download`` and the model-file table (``steadydancer_core.downloads``).

The hub is unreachable in tests: transfers go through ``LocalHub``, a stand-in that serves files from a
folder the test fills and writes the same lock/metadata side files huggingface_hub writes in ``local_dir``
mode; the offline path runs the real ``HuggingFaceHub``.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from steadydancer_core import cli_download, downloads
from steadydancer_core.__main__ import main
from steadydancer_core.encoders import missing_wan_components

REPO = Path(__file__).resolve().parents[1]
WAN_CONFIGS = {"vae/config.json": "{}", "vae/diffusion_pytorch_model.safetensors": "w",
               "text_encoder/config.json": "{}", "text_encoder/model-00001-of-00002.safetensors": "w",
               "text_encoder/model-00002-of-00002.safetensors": "w", "text_encoder/model.safetensors.index.json": "{}",
               "tokenizer/tokenizer_config.json": "{}", "tokenizer/spiece.model": "s",
               "image_encoder/config.json": "{}", "image_encoder/model.safetensors": "w",
               "image_processor/preprocessor_config.json": "{}",
               "transformer/diffusion_pytorch_model-00001-of-00014.safetensors": "never wanted",
               "model_index.json": "{}"}


class LocalHub:
    """Repos as folders under ``root``; records each fetch; ``fail_on`` makes one path fail half-way."""

    def __init__(self, root: Path, fail_on: str | None = None) -> None:
        self.root, self.fail_on, self.fetched = root, fail_on, []

    def add(self, repo: str, files: dict[str, str]) -> None:
        for path, text in files.items():
            (self.root / repo / path).parent.mkdir(parents=True, exist_ok=True)
            (self.root / repo / path).write_text(text)

    def unreachable_reason(self) -> str | None:
        return None

    def list_files(self, repo: str) -> dict[str, int | None]:
        base = self.root / repo
        return {p.relative_to(base).as_posix(): p.stat().st_size for p in base.rglob("*") if p.is_file()}

    def file_size(self, repo: str, path: str) -> int | None:
        return (self.root / repo / path).stat().st_size

    def fetch(self, repo: str, path: str, local_dir: Path) -> Path:
        side = local_dir / ".cache" / "huggingface" / "download" / path
        side.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{side}.lock").write_text("")
        Path(f"{side}.metadata").write_text("sha\n")
        (local_dir / ".cache" / "huggingface" / ".gitignore").write_text("*")
        if path == self.fail_on:
            Path(f"{side}.incomplete").write_text("half")
            raise ConnectionError("connection reset")
        self.fetched.append((repo, path))
        target = local_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((self.root / repo / path).read_bytes())
        return target


def _published(hub: LocalHub) -> None:
    """Every file of the table, plus files a set-up must not fetch."""
    for file in downloads.FILES:
        if not file.is_glob:
            hub.add(file.repo, {file.pattern: f"{file.key} weights"})
    hub.add(downloads.WAN_DIFFUSERS_REPO, WAN_CONFIGS)
    hub.add(downloads.OFFICIAL_DIT_REPO, {"diffusion_pytorch_model-00001-of-00002.safetensors": "a",
                                          "diffusion_pytorch_model-00002-of-00002.safetensors": "b",
                                          "diffusion_pytorch_model.safetensors.index.json": "{}",
                                          "README.md": "card", "assets/teaser.mp4": "never wanted"})


def _args(**values: object) -> argparse.Namespace:
    parser = cli_download.add_arguments(argparse.ArgumentParser())
    argv = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return parser.parse_args(argv)


def _workflow_models() -> dict[str, set[str]]:
    """folder -> file names the shipped API workflows load (read from the JSON, not from the table)."""
    by_input = {"unet_name": "diffusion_models", "vae_name": "vae", "lora_name": "loras"}
    wanted: dict[str, set[str]] = {}
    for path in (REPO / "workflows").glob("*_api.json"):
        for node in json.loads(path.read_text()).values():
            inputs = node["inputs"]
            for key, folder in by_input.items():
                if key in inputs:
                    wanted.setdefault(folder, set()).add(inputs[key])
            if "clip_name" in inputs:
                folder = "clip_vision" if node["class_type"] == "CLIPVisionLoader" else "text_encoders"
                wanted.setdefault(folder, set()).add(inputs["clip_name"])
    return wanted


def _files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_comfyui_layout_puts_every_workflow_file_where_the_workflows_load_it(tmp_path: Path, capsys) -> None:
    hub = LocalHub(tmp_path / "hub")
    _published(hub)
    comfy = tmp_path / "ComfyUI"
    (comfy / "models").mkdir(parents=True)
    assert cli_download.run(_args(comfyui=comfy, lora=True), hub) == 0
    expected = {f"models/{folder}/{name}" for folder, names in _workflow_models().items() for name in names}
    expected |= {"models/steadydancer_pose/yolox_l.onnx", "models/steadydancer_pose/dw-ll_ucoco_384.onnx"}
    assert _files_under(comfy) == expected  # exactly these: no staging, lock or metadata file left
    assert (comfy / "models/vae/wan_2.1_vae.safetensors").read_text() == "vae weights"
    # A second run finds everything in place and fetches nothing.
    hub.fetched.clear()
    assert cli_download.run(_args(comfyui=comfy, lora=True), hub) == 0
    assert hub.fetched == []
    assert "0 of 7 file(s) to fetch" in capsys.readouterr().out


def test_standalone_layout_is_what_animate_and_poses_read(tmp_path: Path) -> None:
    hub = LocalHub(tmp_path / "hub")
    _published(hub)
    models = tmp_path / "models"
    assert cli_download.run(_args(dir=models), hub) == 0
    wan_dir = models / downloads.WAN_DIFFUSERS_FOLDER
    assert missing_wan_components(wan_dir) == []  # the check animate runs on --wan-dir
    assert not (wan_dir / "transformer").exists() and not (wan_dir / "model_index.json").exists()
    dit = models / downloads.OFFICIAL_DIT_FOLDER
    assert _files_under(dit) == {"config.json", "diffusion_pytorch_model-00001-of-00002.safetensors",
                                 "diffusion_pytorch_model-00002-of-00002.safetensors",
                                 "diffusion_pytorch_model.safetensors.index.json"}
    assert _files_under(models / "steadydancer_pose") == {"yolox_l.onnx", "dw-ll_ucoco_384.onnx"}
    assert not (models / downloads.STAGING_NAME).exists()


def test_dry_run_lists_repo_file_size_destination_and_fetches_nothing(tmp_path: Path, capsys) -> None:
    hub = LocalHub(tmp_path / "hub")
    _published(hub)
    comfy = tmp_path / "ComfyUI"
    (comfy / "models").mkdir(parents=True)
    assert cli_download.run(_args(comfyui=comfy, dit="fp16", dry_run=True), hub) == 0
    out = capsys.readouterr().out
    assert hub.fetched == [] and _files_under(comfy) == set()
    line = next(line for line in out.splitlines() if "Wan21_I2V_SteadyDancer_fp16" in line)
    size = len("dit_fp16 weights")
    assert line.startswith(f"{downloads.KIJAI_REPO}  SteadyDancer/Wan21_I2V_SteadyDancer_fp16.safetensors  ")
    assert f"({size / 1024**2:.1f} MiB)" in line
    assert line.endswith(str(comfy / "models/diffusion_models/Wan21_I2V_SteadyDancer_fp16.safetensors"))
    assert "fp8_e4m3fn_scaled_KJ" not in out  # only the chosen DiT


def test_official_shards_for_comfyui_print_the_merge_command(tmp_path: Path, capsys) -> None:
    hub = LocalHub(tmp_path / "hub")
    _published(hub)
    comfy = tmp_path / "ComfyUI"
    (comfy / "models").mkdir(parents=True)
    assert cli_download.run(_args(comfyui=comfy, dit="official", no_wan=True, no_pose=True), hub) == 0
    shards = comfy / "models" / downloads.COMFY_SHARDS_FOLDER / downloads.OFFICIAL_DIT_FOLDER
    assert (shards / "diffusion_pytorch_model.safetensors.index.json").is_file()
    out = capsys.readouterr().out
    merged = comfy / "models/diffusion_models" / downloads.MERGED_DIT_NAME
    assert f"python -m steadydancer_core convert --to safetensors {shards} {merged}" in out


def test_offline_fails_at_once_with_the_list_and_creates_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["download", "--dir", str(tmp_path / "models")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "HF_HUB_OFFLINE is set" in err and "Nothing was downloaded" in err
    for key in downloads.keys_for("standalone", downloads.DEFAULT_DIT["standalone"]):  # every file is named
        assert f"{downloads.BY_KEY[key].repo}  {downloads.BY_KEY[key].pattern}" in err
    assert list(tmp_path.iterdir()) == []


def test_failure_half_way_keeps_finished_files_and_the_partial_but_no_lock_or_empty_folder(tmp_path: Path,
                                                                                          capsys) -> None:
    hub = LocalHub(tmp_path / "hub", fail_on="dw-ll_ucoco_384.onnx")
    _published(hub)
    models = tmp_path / "models"
    assert cli_download.run(_args(dir=models, dit="none", no_wan=True), hub) == 2
    err = capsys.readouterr().err
    assert "yzd-v/DWPose dw-ll_ucoco_384.onnx failed (ConnectionError: connection reset)" in err
    left = _files_under(models)
    assert left == {"steadydancer_pose/yolox_l.onnx",
                    f"{downloads.STAGING_NAME}/.cache/huggingface/download/dw-ll_ucoco_384.onnx.incomplete"}
    assert not any(p.is_dir() and not any(p.iterdir()) for p in models.rglob("*"))


def test_failure_on_the_first_file_leaves_no_folder(tmp_path: Path) -> None:
    hub = LocalHub(tmp_path / "hub", fail_on="split_files/vae/wan_2.1_vae.safetensors")
    _published(hub)
    comfy = tmp_path / "ComfyUI"
    (comfy / "models").mkdir(parents=True)
    assert cli_download.run(_args(comfyui=comfy, dit="none", no_pose=True), hub) == 2
    # Only the partial (to resume) is left, in the hidden staging folder; models/vae was not created.
    assert _files_under(comfy) == {
        f"{downloads.STAGING_NAME}/.cache/huggingface/download/split_files/vae/wan_2.1_vae.safetensors.incomplete"}
    assert sorted(p.name for p in (comfy / "models").iterdir()) == []


def test_bad_targets_are_refused_before_the_hub(tmp_path: Path, capsys) -> None:
    assert main(["download", "--comfyui", str(tmp_path)]) == 2
    assert "no models/ folder there" in capsys.readouterr().err
    assert main(["download", "--dir", str(tmp_path / "m"), "--lora"]) == 2
    assert "standalone animate applies no LoRA" in capsys.readouterr().err


def test_readme_model_table_is_the_table() -> None:
    assert downloads.markdown_table() in (REPO / "README.md").read_text()


def test_no_instruction_names_the_removed_huggingface_cli() -> None:
    # Current huggingface_hub ships `hf`; every instruction points at `python -m steadydancer_core download`.
    texts = [REPO / "README.md", *REPO.glob("steadydancer_core/**/*.py"), *REPO.glob("nodes/*.py"),
             *REPO.glob("training/**/*.md")]
    offenders = [str(p) for p in texts if re.search(r"huggingface-cli", p.read_text())]
    assert offenders == []
