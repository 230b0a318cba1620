"""ComfyUI entry point of the SteadyDancer pack.

ComfyUI imports this file as a package; the nodes live in ``nodes/`` and every algorithm in
``steadydancer_core/`` (which never imports ``comfy`` and is usable on its own).
"""
