"""The SteadyDancer DiT (Wan2.1-I2V + pose branch), its configurations and the attention hook."""
from .attention import AttentionFn, sdpa_attention
from .config import OFFICIAL_14B, TINY, DiTConfig
from .dit import SteadyDancerDiT

__all__ = ["AttentionFn", "DiTConfig", "OFFICIAL_14B", "SteadyDancerDiT", "TINY", "sdpa_attention"]
