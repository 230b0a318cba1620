"""SteadyDancer core: the DiT, pose pipeline, conditioning, guidance and schedules in plain PyTorch.

Never imports ``comfy``; usable standalone (``python -m steadydancer_core``) and from the ComfyUI nodes.
"""
