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
