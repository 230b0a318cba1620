#!/usr/bin/env bash
# Build the environment for the real-ComfyUI tests: a venv with torch+torchvision, ComfyUI's
# requirements (without the frontend/template/doc packages, which the tests bypass with
# --front-end-root) and the pack's dev requirements. ComfyUI itself lives OUTSIDE the repo.
# Usage: tests/comfyui/setup_env.sh [venv-dir]   (default .venv-comfy, gitignored)
set -euo pipefail
venv="${1:-.venv-comfy}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
"$venv/bin/pip" install -q torchsde "numpy>=1.25.0" einops "transformers>=4.50.3" "tokenizers>=0.13.3" \
  sentencepiece "safetensors>=0.4.2" "aiohttp>=3.11.8" "yarl>=1.18.0" pyyaml Pillow scipy tqdm psutil \
  alembic SQLAlchemy "av>=14.2.0" "comfy-kitchen>=0.2.3" "pydantic~=2.0" "pydantic-settings~=2.0" requests
# city96's ComfyUI-GGUF (COMFYUI_GGUF_PATH, tests/test_nodes_gguf.py) needs the gguf package
"$venv/bin/pip" install -q "gguf>=0.13"
"$venv/bin/pip" install -q -r requirements-dev.txt
