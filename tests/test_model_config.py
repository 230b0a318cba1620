"""DiTConfig <-> the official config.json."""
import pytest

from steadydancer_core.model import OFFICIAL_14B, TINY, DiTConfig


def test_official_json_has_the_fields_the_official_wanmodel_reads() -> None:
    data = OFFICIAL_14B.to_official_json()
    assert data["_class_name"] == "WanModel" and data["model_type"] == "i2v"
    assert {k: data[k] for k in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim")} == {
        "dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40, "in_dim": 36, "out_dim": 16}


@pytest.mark.parametrize("config", [OFFICIAL_14B, TINY])
def test_json_round_trip(config: DiTConfig) -> None:
    assert DiTConfig.from_official_json(config.to_official_json()) == config


def test_diffusers_bookkeeping_keys_are_ignored_but_unknown_keys_fail() -> None:
    data = {**OFFICIAL_14B.to_official_json(), "_diffusers_version": "0.33.1", "_name_or_path": "x"}
    assert DiTConfig.from_official_json(data) == OFFICIAL_14B
    with pytest.raises(ValueError, match=r"unknown keys in SteadyDancer config.json: \['hidden_size'\]"):
        DiTConfig.from_official_json({**data, "hidden_size": 3})


def test_t2v_config_and_bad_head_split_are_rejected() -> None:
    with pytest.raises(ValueError, match="i2v"):
        DiTConfig.from_official_json({**OFFICIAL_14B.to_official_json(), "model_type": "t2v"})
    with pytest.raises(ValueError, match="divisible by num_heads"):
        DiTConfig(dim=100, num_heads=3)
