"""ComfyUI entry point of the SteadyDancer pack.

ComfyUI imports this file as a package; the nodes live in ``nodes/`` and every algorithm in
``steadydancer_core/`` (which never imports ``comfy`` and is usable on its own).

Importing registers the SteadyDancer model type with ComfyUI's model detection (idempotent), so
core 'Load Diffusion Model' loads SteadyDancer checkpoints; ``comfy_entrypoint`` hands ComfyUI the
V3 node list.
"""
import importlib.util

# Outside ComfyUI (e.g. pytest collecting the checkout as a package) there is nothing to register.
if importlib.util.find_spec("comfy") is not None:
    from .nodes import model_folders, model_registration
    from .nodes.extension import SteadyDancerExtension

    model_registration.register()
    model_folders.register()

    async def comfy_entrypoint() -> SteadyDancerExtension:
        return SteadyDancerExtension()
