#!/usr/bin/env bash
# Add what the browser tests (tests/browser) need to the real-ComfyUI environment:
#  - Debian's Chromium (/usr/bin/chromium; Playwright's own browser download is not used),
#  - the Python package playwright in the venv made by tests/comfyui/setup_env.sh,
#  - for each ComfyUI folder given, the comfyui-frontend-package version its requirements.txt pins,
#    installed beside it as <ComfyUI>/../frontend-<version>/ (the tests pass its static/ folder
#    to main.py --front-end-root, so two ComfyUI versions each get their own frontend).
# Usage: tests/comfyui/browser_env.sh [venv-dir] COMFYUI_DIR...
#   e.g. tests/comfyui/browser_env.sh .venv-comfy /work/comfyui/0.3.64 /work/comfyui/0.8.0
set -euo pipefail
venv="${1:-.venv-comfy}"
shift || true

# fonts-noto-cjk: the official negative prompt is Chinese; without CJK fonts the screenshots show boxes.
if [ ! -x /usr/bin/chromium ] || ! dpkg -s fonts-noto-cjk >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "browser_env: run as root (or install them yourself): apt-get install -y chromium fonts-noto-cjk" >&2
        exit 1
    fi
    apt-get update -q
    apt-get install -y -q chromium fonts-noto-cjk
fi

"$venv/bin/pip" install -q "playwright>=1.50"
# ComfyUI's "non essential" requirements that setup_env.sh leaves out: without spandrel ComfyUI lacks
# UpscaleModelLoader, and frontend 1.27.10 then fails to build the vae_name/lora_name/ckpt_name combo
# widgets of every loader node (its model-to-node map dereferences the missing definition).
"$venv/bin/pip" install -q spandrel "kornia>=0.7.1"

for comfyui in "$@"; do
    version=$(sed -n 's/^comfyui-frontend-package==\([^[:space:]]*\).*/\1/p' "$comfyui/requirements.txt")
    if [ -z "$version" ]; then
        echo "browser_env: $comfyui/requirements.txt pins no comfyui-frontend-package==<version>" >&2
        exit 1
    fi
    target="$(cd "$comfyui/.." && pwd)/frontend-$version"
    if [ ! -f "$target/comfyui_frontend_package/static/index.html" ]; then
        # --no-deps: only the built web app; --target keeps versions side by side outside the venv.
        "$venv/bin/pip" install -q --no-deps --target "$target" "comfyui-frontend-package==$version"
    fi
    echo "browser_env: $comfyui -> frontend $version at $target/comfyui_frontend_package/static"
done
