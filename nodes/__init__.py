"""ComfyUI adapters: node schemas that call into ``steadydancer_core``. No algorithms live here."""
