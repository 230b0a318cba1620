#!/usr/bin/env bash
# Export a bare ComfyUI mirror (no work tree; a few large blobs may be absent) into a plain folder.
# Usage: export_comfyui.sh <git-dir> <target-dir>
set -euo pipefail
git_dir="$1"; target="$2"
mkdir -p "$target"
git --git-dir="$git_dir" ls-tree -r --full-tree HEAD | while IFS=$'\t' read -r meta path; do
  read -r mode type sha <<<"$meta"
  [ "$type" = blob ] || continue
  mkdir -p "$target/$(dirname "$path")"
  if ! git --git-dir="$git_dir" cat-file blob "$sha" >"$target/$path" 2>/dev/null; then
    rm -f "$target/$path"; echo "absent blob skipped: $path" >&2
  fi
done
