"""What one code length's training leaves behind (:class:`BitsResult`), for the training loop and the fits."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional


@dataclass
class BitsResult:
    """What one code length's training left behind."""

    bits: int
    directory: Path
    epochs: int
    best_epoch: Optional[int]
    best_metric: Optional[float]
    select_on: str
    seconds: float
    history: List[Dict[str, Any]] = field(default_factory=list)
    # the score that picked the best epoch ("val_map", "query_map", or "val_copy_map" without labels)
    selected_by: Optional[str] = None
    # Spearman's rank correlation of val_map and val_copy_map over the epochs (labelled data)
    copy_spearman: Optional[float] = None
    precision: Optional[str] = None  # of the training forward passes: "bf16" or "fp32" (None: a fit)

    def to_dict(self) -> Dict[str, Any]:
        return {"bits": self.bits, "directory": str(self.directory), "epochs": self.epochs,
                "best_epoch": self.best_epoch, "best_metric": self.best_metric, "select_on": self.select_on,
                "selected_by": self.selected_by, "copy_spearman": self.copy_spearman,
                "seconds": round(self.seconds, 3), "precision": self.precision}
