"""``training/run_stage.py`` loses nothing and prints no traceback for user errors (DESIGN D10, D13): an
output_dir holding an earlier run needs --resume or --overwrite, a --max_steps run writes no final/,
keep_last prunes only this run's checkpoints, config mistakes name the file/line or key and type, and
``_script`` reports only UserErrors as one line (a bug keeps its traceback)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from cli_checks import run_script, tree_digest
from test_training_e2e import one_thread, stage_cfg  # noqa: F401  (one_thread: autouse fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

import _script  # noqa: E402
import run_stage as run_stage_script  # noqa: E402

from steadydancer_core.errors import InputError  # noqa: E402
from steadydancer_train.checkpointing import read_meta  # noqa: E402
from steadydancer_train.synthetic import MICRO, write_random_cache, write_training_fixture  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUN_FILES = ["ckpt", "config.resolved.yaml", "final", "metrics.jsonl", "run_info.json"]


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_training_fixture(tmp_path_factory.mktemp("train_errors"))


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def finished_run(fixture_dir: Path) -> tuple[Path, Path]:
    """A complete 3-step stage-1 run in ``finished/`` and its config file."""
    out = fixture_dir / "finished"
    config = write_config(fixture_dir / "finished.yaml", stage_cfg(fixture_dir, out, 1))
    assert run_script(run_stage_script, ["--stage", "1", "--config", str(config)]) == 0
    return out, config


@pytest.fixture()
def earlier_run(finished_run: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished run (with a file of the user's beside it) and a config pointing at the copy."""
    out = tmp_path / "run"
    shutil.copytree(finished_run[0], out)
    (out / "notes.txt").write_text("my notes on this run")
    cfg = yaml.safe_load(finished_run[1].read_text())
    cfg["run"]["output_dir"] = str(out)
    return out, write_config(tmp_path / "run.yaml", cfg)


def _fails(capsys: pytest.CaptureFixture, argv: list[str], message: str) -> str:
    assert run_script(run_stage_script, argv) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert "Traceback" not in error and error.startswith("error: ") and error.count("\n") == 1, error
    return error


def _metric_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _run_ids(out: Path) -> dict[str, str]:
    return {p.name: read_meta(p)["run_id"] for p in sorted((out / "ckpt").glob("step_*"))}


@pytest.mark.parametrize("extra", [[], ["--dry_run"], ["--dry-run"]], ids=["run", "dry_run", "dry-run"])
def test_an_earlier_run_is_refused_without_resume_or_overwrite(extra: list[str], earlier_run: tuple[Path, Path],
                                                               capsys: pytest.CaptureFixture) -> None:
    out, config = earlier_run
    before = tree_digest(out)
    _fails(capsys, ["--stage", "1", "--config", str(config), *extra],
           f"run.output_dir {out} already holds metrics.jsonl, run_info.json, config.resolved.yaml, ckpt, final "
           "from an earlier run; continue it with --resume auto, replace it with --overwrite")
    assert tree_digest(out) == before


def test_resuming_another_runs_checkpoint_into_an_earlier_run_is_refused(
        earlier_run: tuple[Path, Path], finished_run: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    out, config = earlier_run
    before = tree_digest(out)
    other = finished_run[0] / "ckpt" / "step_000002"
    _fails(capsys, ["--stage", "1", "--config", str(config), "--resume", str(other)],
           f"--resume {other} is not a checkpoint of the run in run.output_dir {out}")
    assert tree_digest(out) == before


def test_a_failed_overwrite_keeps_the_earlier_run(earlier_run: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out, config = earlier_run
    before = tree_digest(out)
    # The cache check fails after the output check: nothing may have been deleted by then.
    _fails(capsys, ["--stage", "1", "--config", str(config), "--overwrite",
                    "--set", f"data.cache_dir={tmp_path / 'no_cache'}"], "cache folder not found")
    assert tree_digest(out) == before


def test_overwrite_replaces_only_the_runs_own_files(earlier_run: tuple[Path, Path]) -> None:
    out, config = earlier_run
    old_final = tree_digest(out / "final")
    old_ids = set(_run_ids(out).values())
    assert run_script(run_stage_script, ["--stage", "1", "--config", str(config), "--overwrite",
                                         "--set", "seed=8"]) == 0
    assert (out / "notes.txt").read_text() == "my notes on this run"
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES + ["notes.txt"])
    assert _metric_steps(out) == [1, 2, 3]  # not appended to the earlier run's three records
    new_ids = _run_ids(out)
    assert list(new_ids) == ["step_000001", "step_000002", "step_000003"] and len(set(new_ids.values())) == 1
    assert not old_ids & set(new_ids.values())
    assert tree_digest(out / "final").keys() == old_final.keys() and tree_digest(out / "final") != old_final


def test_an_overwrite_that_fails_mid_run_puts_the_earlier_run_back(earlier_run: tuple[Path, Path],
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from steadydancer_train import trainer

    out, config = earlier_run
    before = tree_digest(out)
    real_lr_at = trainer.lr_at

    def fail_at_step_two(cfg, step):  # a crash after the new run wrote its first checkpoint
        if step == 2:
            raise RuntimeError("CUDA out of memory at step 2")
        return real_lr_at(cfg, step)

    monkeypatch.setattr(trainer, "lr_at", fail_at_step_two)
    with pytest.raises(RuntimeError, match="step 2"):
        run_script(run_stage_script, ["--stage", "1", "--config", str(config), "--overwrite", "--set", "seed=8"])
    after = tree_digest(out)
    failed = {name: digest for name, digest in after.items() if name.startswith(trainer.FAILED_RUN)}
    assert {name: digest for name, digest in after.items() if name not in failed} == before
    # The failed run's outputs are kept aside, not lost: its metrics and its first checkpoint.
    assert f"{trainer.FAILED_RUN}/metrics.jsonl" in failed and f"{trainer.FAILED_RUN}/ckpt" in failed
    assert _metric_steps(out / trainer.FAILED_RUN) == [1, 2]
    # A folder left with a run set aside (a killed --overwrite) is refused until the user sorts it out.
    (out / trainer.REPLACED_RUN).mkdir()
    capsys.readouterr()
    assert run_script(run_stage_script, ["--stage", "1", "--config", str(config), "--overwrite"]) == 2
    assert "an earlier run that an interrupted --overwrite set aside" in capsys.readouterr().err


def test_a_partial_run_writes_no_final_until_resumed_to_the_end(fixture_dir: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "partial"
    config = write_config(tmp_path / "partial.yaml", stage_cfg(fixture_dir, out, 1))
    assert run_script(run_stage_script, ["--stage", "1", "--config", str(config), "--max_steps", "2"]) == 0
    assert "stopped at step 2 of 3 (--max_steps)" in capsys.readouterr().err
    assert not (out / "final").exists() and (out / "ckpt" / "latest").read_text() == "step_000002"
    assert run_script(run_stage_script, ["--stage", "1", "--config", str(config), "--resume", "auto"]) == 0
    assert (out / "final" / "lora_comfy.safetensors").is_file() and _metric_steps(out) == [1, 2, 3]


def test_resume_drops_the_metrics_logged_after_its_checkpoint(fixture_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cfg = stage_cfg(fixture_dir, out, 1)
    cfg["run"]["save_every"] = 2
    config = write_config(tmp_path / "killed.yaml", cfg)
    assert run_script(run_stage_script, ["--stage", "1", "--config", str(config)]) == 0
    # As if killed after logging step 3 but before its checkpoint: latest is step 2, a torn line at the end.
    shutil.rmtree(out / "ckpt" / "step_000003")
    (out / "ckpt" / "latest").write_text("step_000002")
    shutil.rmtree(out / "final")
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 4, "lo')
    assert run_script(run_stage_script, ["--stage", "1", "--config", str(config), "--resume", "auto"]) == 0
    assert _metric_steps(out) == [1, 2, 3]


def test_keep_last_prunes_only_this_runs_checkpoints(finished_run: tuple[Path, Path], fixture_dir: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    cfg = stage_cfg(fixture_dir, out, 1)
    cfg["optim"]["steps"] = 2
    cfg["run"]["keep_last"] = 0  # keep all
    config = write_config(tmp_path / "pruned.yaml", cfg)
    assert run_script(run_stage_script, ["--stage", "1", "--config", str(config)]) == 0
    # Another run's checkpoint and a folder of the user's, both named like step folders.
    shutil.copytree(finished_run[0] / "ckpt" / "step_000001", out / "ckpt" / "step_000000")
    (out / "ckpt" / "step_backup").mkdir()
    (out / "ckpt" / "step_backup" / "readme.txt").write_text("mine")
    foreign = tree_digest(out / "ckpt" / "step_000000")
    cfg["optim"]["steps"], cfg["run"]["keep_last"] = 4, 1  # extend the run, keep only its newest checkpoint
    write_config(config, cfg)
    assert run_script(run_stage_script, ["--stage", "1", "--config", str(config), "--resume", "auto"]) == 0
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == ["latest", "step_000000", "step_000004", "step_backup"]
    assert tree_digest(out / "ckpt" / "step_000000") == foreign
    assert (out / "ckpt" / "step_backup" / "readme.txt").read_text() == "mine"


def _file(name: str, content: str | bytes = "") -> Callable[[Path], Path]:
    """Makes the file ``name`` holding ``content`` in the test's folder and returns its path."""
    def make(root: Path) -> Path:
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path
    return make


def _corrupt_cache(root: Path) -> Path:
    cache = root / "bad_cache"
    cache.mkdir()
    (cache / "clip0000.safetensors").write_text("not a safetensors file")
    return cache


def _other_model_cache(root: Path) -> Path:
    """A cache precomputed for a model with another text width."""
    write_random_cache(root / "other_cache", MICRO.replace(text_dim=8), 1, clip_tokens=9)
    return root / "other_cache"


BAD_YAML = _file("bad.yaml", "stage: 1\noptim:\n  lr: [0.1\n  steps: 3\n")

# One row per bad input: what differs from a good stage-1 run ("config": the config file, "set": --set
# overrides, "args": more arguments; a callable value makes a file in the test's folder), the expected
# message. Each must exit 2 with one line and leave no output_dir.
BAD_INPUTS = [
    ("malformed YAML", {"config": BAD_YAML}, "is not valid YAML (line 4, column 8"),
    ("missing config file", {"config": lambda root: root / "absent.yaml"}, "config file not found"),
    ("zero-byte config", {"config": _file("zero.yaml")}, "config data.cache_dir is empty"),
    ("config holds a list", {"config": _file("list.yaml", "- 1\n")}, "must hold a mapping at the top level"),
    ("unknown key", {"set": {"optim.learning_rate": "1"}}, "unknown config keys in optim: ['learning_rate']"),
    ("number of the wrong type", {"set": {"optim.lr": "abc"}}, "config optim.lr must be a number, got 'abc'"),
    ("fractional integer", {"set": {"optim.steps": "1.5"}}, "config optim.steps must be an integer, got 1.5"),
    ("string for a list", {"set": {"optim.betas": "abc"}}, "config optim.betas must be a list, got 'abc'"),
    ("override into a value", {"set": {"stage.x": "1"}}, "--set stage.x=1: stage is a value, not a config section"),
    ("override without =", {"args": ["--set", "optim.lr"]}, "must look like section.key=value"),
    ("empty cache_dir", {"set": {"data.cache_dir": ""}}, "config data.cache_dir is empty"),
    ("empty output_dir", {"set": {"run.output_dir": ""}}, "config run.output_dir is empty"),
    ("save_every 0", {"set": {"run.save_every": "0"}}, "run.save_every and run.log_every must be >= 1"),
    ("corrupt cache file", {"set": {"data.cache_dir": _corrupt_cache}}, "unreadable cache file"),
    ("cache of another model size", {"set": {"data.cache_dir": _other_model_cache}},
     "clip0000.safetensors: context has shape [5, 8], expected [L <= 16, 32]"),
    ("frame count not 4n+1", {"set": {"data.num_frames": "80"}}, "data.num_frames must be 4n+1"),
    ("missing start checkpoint", {"set": {"model.wan_checkpoint": lambda root: root / "absent.safetensors"}},
     "model.wan_checkpoint: checkpoint not found"),
    ("zero-byte start checkpoint", {"set": {"model.wan_checkpoint": _file("zero.safetensors", b"")}},
     "file is 0 bytes"),
    ("corrupt model.arch", {"set": {"model.arch": _file("arch.json", "{")}}, "is not an official DiT config.json"),
    ("misspelt LoRA target", {"set": {"lora.targets": "[self_attn.q, self_attn.qq]"}},
     "lora.targets ['self_attn.qq'] match no Linear module"),
    ("resume folder that is no checkpoint", {"args": ["--resume", lambda root: root]}, "not a training checkpoint"),
    ("resume and overwrite", {"args": ["--resume", "auto", "--overwrite"]}, "give one"),
    ("output_dir is a file", {"set": {"run.output_dir": _file("out_file", "x")}}, "exists and is a file"),
]


@pytest.mark.parametrize("change, message", [row[1:] for row in BAD_INPUTS], ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_is_one_line_and_writes_nothing(change: dict, message: str, fixture_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    def value(item: str | Callable[[Path], Path]) -> str:
        return str(item(tmp_path)) if callable(item) else item

    out = tmp_path / "out"
    good = lambda root: write_config(root / "good.yaml", stage_cfg(fixture_dir, out, 1))  # noqa: E731
    argv = ["--stage", "1", "--config", value(change.get("config", good))]
    for key, item in change.get("set", {}).items():
        argv += ["--set", f"{key}={value(item)}"]
    argv += [value(item) for item in change.get("args", [])]
    _fails(capsys, argv, message)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present, so compute.device=cuda is valid")
def test_cuda_without_a_device_is_a_config_error(fixture_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / "c.yaml", stage_cfg(fixture_dir, tmp_path / "out", 1))
    _fails(capsys, ["--stage", "1", "--config", str(config), "--set", "compute.device=cuda"],
           "compute.device is 'cuda' but no CUDA device is available")


def test_script_reports_user_errors_and_keeps_the_traceback_of_bugs(capsys: pytest.CaptureFixture) -> None:
    def user_error() -> int:
        raise InputError("the manifest lists no clips")

    with pytest.raises(SystemExit) as stop:
        _script.run(user_error)
    assert stop.value.code == 2 and capsys.readouterr().err == "error: the manifest lists no clips\n"
    for bug in (ValueError("shape mismatch in the loss"), KeyError("blocks.0.q")):
        def buggy() -> int:
            raise bug
        with pytest.raises(type(bug)):  # not swallowed into one line: the traceback reaches the user
            _script.run(buggy)


def test_the_real_script_names_the_yaml_file_and_line(tmp_path: Path) -> None:
    config = BAD_YAML(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "training" / "run_stage.py"), "--stage", "1", "--config",
                           str(config)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: config {config} is not valid YAML "
                           "(line 4, column 8: expected ',' or ']', but got ':')\n")
