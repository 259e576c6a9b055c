"""The one way benchmarks record results: reports/bench/<topic>.json, with when and where they ran."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

from tunebook import paths


def write_summary(topic: str, summary: dict) -> Path:
    record = {
        **summary,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    out = paths.project_root() / "reports" / "bench" / f"{topic}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return out
