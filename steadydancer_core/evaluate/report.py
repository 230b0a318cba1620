"""The report on disk: ``report.json`` (``{"mean", "per_video", "settings"}``) and a CSV beside it with one row
per clip and a last row ``mean``; both written atomically (a failed run leaves earlier files as they were)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from ..atomic_output import atomic_path


def csv_path_for(json_path: Path) -> Path:
    return json_path.with_suffix(".csv")


def _json_safe(value: Any) -> Any:
    """NaN/inf become null: JSON has no NaN, and a missing value must not read as a number."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: dict[str, Any], json_path: Path) -> tuple[Path, Path]:
    """Write ``report`` to ``json_path`` and its CSV; returns both paths."""
    json_path = Path(json_path)
    csv_file = csv_path_for(json_path)
    rows = report["per_video"] + [{"name": "mean", **report["mean"]}]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(csv_file) as temporary_csv, atomic_path(json_path) as temporary_json:
        with open(temporary_csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({key: ("" if value is None else value) for key, value in _json_safe(row).items()})
        temporary_json.write_text(json.dumps(_json_safe(report), indent=2))
    return json_path, csv_file
