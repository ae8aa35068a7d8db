"""What every benchmark records about the machine it ran on (the scripts import it from their folder)."""
from __future__ import annotations

import platform
import subprocess


def cpu_model() -> str:
    """``lscpu``'s model name ("AMD EPYC", ...), the platform's processor string without lscpu."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name:")),
                "unknown")


def load_text(triple) -> str:
    """A load average (1, 5, 15 min) as "0.52, 0.61, 0.70"."""
    return ", ".join(f"{v:.2f}" for v in triple)


def write_results(result: dict, out, report) -> dict:
    """Write ``result`` as JSON to ``out`` and ``report(result)`` as Markdown beside it (same name,
    ``.md``), print the Markdown, and return ``result``."""
    import json
    from pathlib import Path

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(report(result))
    print(out.with_suffix(".md").read_text())
    return result
