"""Training with the sequence-parallel DiT (``compute.sequence_parallel: 2``): two gloo processes sharing each
sample's tokens (Ulysses) equal one process — stage 2, so FSDP2, gradient checkpointing and the three forwards
with different token counts (full, unconditional without the reference frames, teacher) are all exercised."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from steadydancer_core.model.checkpoint import load_state_dict  # noqa: E402
from steadydancer_train.config import config_from_dict  # noqa: E402
from steadydancer_train.synthetic import MICRO, write_training_fixture  # noqa: E402
from steadydancer_train.trainer import run_stage  # noqa: E402
from test_training_dist import TORCHRUN, make_cfg, single_thread, torchrun  # noqa: E402
from tiny_models import build_tiny_dit_checkpoint  # noqa: E402


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun not installed beside the interpreter")
def test_token_split_training_two_ranks_equal_one_process(tmp_path):
    root = write_training_fixture(tmp_path)
    build_tiny_dit_checkpoint(root / "start" / "final" / "dit_merged", MICRO, sharded=True)  # the student's start
    one = single_thread(run_stage, config_from_dict(make_cfg(root, "sp_one", 2, "none", 1)))
    cfg = make_cfg(root, "sp_two", 2, "fsdp2", 1)
    cfg["compute"]["sequence_parallel"] = 2
    two = torchrun(root, cfg, 2)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        for key in ("loss", "loss_uncond", "loss_cond", "sigma", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    merged_one = load_state_dict(root / "sp_one" / "final" / "dit_merged")
    merged_two = load_state_dict(root / "sp_two" / "final" / "dit_merged")
    assert merged_one.keys() == merged_two.keys()
    for key in merged_one:
        # Two Adam steps at lr 1e-3: Adam divides by sqrt(v), so a gradient element near zero carries the
        # summation-order rounding of the two ranks' partial sums into its update at full size (seen: 3.9e-6).
        torch.testing.assert_close(merged_two[key], merged_one[key], rtol=1e-5, atol=1e-5)


def test_token_split_training_config_errors(tmp_path):
    from steadydancer_train.distributed import check_sequence_parallel
    from steadydancer_train.config import ConfigError

    with pytest.raises(ConfigError, match=r"must be >= 1 and divide the number of processes \(3\)"):
        check_sequence_parallel(2, 3, 40)
    with pytest.raises(ConfigError, match="must divide the DiT's 40 attention heads"):
        check_sequence_parallel(3, 3, 40)
