"""The SteadyDancer DiT (Wan2.1-I2V + pose branch), its configurations, the attention hook and
checkpoint I/O (single file, diffusers shards, scaled fp8)."""
from .attention import AttentionFn, sdpa_attention
from .checkpoint import (check_is_steadydancer, infer_config, load_dit, load_state_dict, read_checkpoint_config,
                         save_dit)
from .checkpoint_errors import (CheckpointError, CorruptCheckpointError, MissingShardError, NotSteadyDancerError,
                                StateDictMismatchError)
from .config import OFFICIAL_14B, TINY, DiTConfig
from .dit import SteadyDancerDiT

__all__ = [
    "AttentionFn", "CheckpointError", "CorruptCheckpointError", "DiTConfig", "MissingShardError",
    "NotSteadyDancerError", "OFFICIAL_14B", "StateDictMismatchError", "SteadyDancerDiT", "TINY",
    "check_is_steadydancer", "infer_config", "load_dit", "load_state_dict", "read_checkpoint_config", "save_dit",
    "sdpa_attention",
]
