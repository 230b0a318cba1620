"""SteadyDancer training: the three paper stages on torchrun + FSDP2/DDP (see training/README.md).

Modules: ``config`` (strict config tree), ``manifest`` / ``precompute_clips`` / ``build_manifest_lib`` (data
preparation), ``data`` (cache format, stateless sample order), ``flow`` (sigma sampling, targets),
``forwards`` (SteadyDancer / unconditional student / Wan2.1-I2V teacher forwards), ``lora`` (peft LoRA,
ComfyUI export), ``model_setup`` (weights, new-module init, placement), ``losses``, ``distributed``,
``checkpointing`` (DCP resume), ``exports``, ``metrics``, ``trainer`` (the loop), ``synthetic`` (test fixtures).
"""
