"""Training settings: the options of a run and the defaults (recipes) that fill the ones left unset.

Two recipes:

- ``original``: the published one, for pretrained or full-size (224 px) presets: RMSprop, lr 2.5e-5,
  weight decay 1e-5, no schedule, 15 epochs, evaluation every 3, batch 64, the per-image train
  transforms of SPEC section 5, mixed precision where the device has it.
- ``scratch``: small presets trained from random weights on small images (``hybridhash_cpu``).
  AdamW with a linear warm-up to a higher peak and a cosine decay, a larger-scale init of the
  layer that makes the code bits (which shortens the initial plateau of the loss at 2 ln 2, where
  every output is near 0 and so is every gradient), small batches (more steps per epoch matter
  more than throughput here), random shifts of cached images per batch, and on a CPU the code
  lengths trained side by side in one single-threaded process per core (a model this small keeps
  one core busy better than it splits its small matrix products over two).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

from ..codes import check_bits
from ..errors import ConfigError

OPTIMIZERS = ("rmsprop", "adamw")
SCHEDULES = ("constant", "cosine")
DATA_MODES = ("stream", "cache")
SELECT_ON = ("val", "query")
# largest image edge the scratch recipe is meant for
SCRATCH_MAX_IMG = 64


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` means "the recipe's default"."""

    dataset: str = "digits"
    root: Optional[str] = None
    image_root: Optional[str] = None
    download: bool = False
    model: str = "hybridhash_cpu"
    model_overrides: Dict[str, Any] = field(default_factory=dict)
    pretrained: Optional[str] = None
    bits: Tuple[int, ...] = (16, 32, 48, 64)
    out: str = "runs/train"
    seed: int = 0
    val_fraction: float = 0.1
    select_on: str = "val"
    # recipe-filled
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    optimizer: Optional[str] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    momentum: Optional[float] = None
    schedule: Optional[str] = None
    warmup_epochs: Optional[float] = None
    head_init_std: Optional[float] = None
    data_mode: Optional[str] = None
    shift: Optional[int] = None
    eval_every: Optional[int] = None
    amp: Optional[bool] = None
    grad_clip: Optional[float] = None
    # loss
    alpha: float = 0.5
    bank_rows: Optional[int] = None
    bank_fp16: bool = False
    # machinery
    device: str = "auto"
    workers: int = 0
    eval_batch_size: int = 256
    save_every: int = 1
    resume: bool = False
    tensorboard: bool = False
    quiet: bool = False
    threads: Optional[int] = None
    # code lengths trained at once in separate CPU processes (0: as many as cores and code lengths)
    parallel: Optional[int] = None
    # test hook: return after this many epochs have been saved, as a killed run would leave it
    stop_after_epochs: Optional[int] = None
    recipe: Optional[str] = None

    def __post_init__(self) -> None:
        self.bits = tuple(int(b) for b in self.bits)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["bits"] = list(self.bits)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown training options: {', '.join(unknown)}")
        return cls(**d)


def original_recipe() -> Dict[str, Any]:
    """The published run's settings (SPEC section 5)."""
    return dict(epochs=15, batch_size=64, optimizer="rmsprop", lr=2.5e-5, weight_decay=1e-5, momentum=0.0,
                schedule="constant", warmup_epochs=0.0, head_init_std=None, data_mode="stream", shift=0,
                eval_every=3, amp=True, grad_clip=None, parallel=1)


def scratch_recipe(img_size: int) -> Dict[str, Any]:
    """Settings that converge from random weights for small models on small images (SPEC section 8)."""
    return dict(epochs=30, batch_size=16, optimizer="adamw", lr=2e-3, weight_decay=1e-4, momentum=None,
                schedule="cosine", warmup_epochs=1.0, head_init_std=0.1, data_mode="cache",
                shift=max(1, round(img_size / 16)), eval_every=5, amp=True, grad_clip=5.0, parallel=0)


def choose_recipe(img_size: int, pretrained: Optional[str]) -> str:
    """``scratch`` for random-init models on images of at most 64 px, ``original`` otherwise."""
    return "scratch" if not pretrained and img_size <= SCRATCH_MAX_IMG else "original"


def resolve(config: TrainConfig, img_size: int) -> TrainConfig:
    """A copy of ``config`` with every recipe-filled option set, checked."""
    name = config.recipe or choose_recipe(img_size, config.pretrained)
    if name not in ("original", "scratch"):
        raise ConfigError(f"unknown recipe {name!r}; use original or scratch")
    defaults = original_recipe() if name == "original" else scratch_recipe(img_size)
    filled = {k: (getattr(config, k) if getattr(config, k) is not None else v) for k, v in defaults.items()}
    out = dataclasses.replace(config, recipe=name, **filled)
    check(out)
    return out


def check_bits_list(bits: Sequence[int]) -> None:
    """Raise ConfigError unless ``bits`` lists distinct code lengths that pass :func:`~hybridhash.codes.check_bits`."""
    if not bits:
        raise ConfigError("--bits needs at least one code length")
    for b in bits:
        check_bits(b, "--bits")
    if len(set(bits)) != len(bits):
        raise ConfigError(f"--bits lists a code length twice: {list(bits)}")


def check(c: TrainConfig) -> None:
    """Raise ConfigError naming the first option that cannot work."""
    check_bits_list(c.bits)
    positive = dict(epochs=c.epochs, batch_size=c.batch_size, eval_every=c.eval_every, save_every=c.save_every,
                    eval_batch_size=c.eval_batch_size)
    for name, v in positive.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
    if not c.lr > 0:
        raise ConfigError(f"--lr must be positive, got {c.lr}")
    if c.weight_decay < 0:
        raise ConfigError(f"--weight-decay must be >= 0, got {c.weight_decay}")
    if c.optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {c.optimizer!r}")
    if c.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {c.schedule!r}")
    if c.data_mode not in DATA_MODES:
        raise ConfigError(f"--data-mode must be one of {', '.join(DATA_MODES)}, got {c.data_mode!r}")
    if c.select_on not in SELECT_ON:
        raise ConfigError(f"--select-on must be one of {', '.join(SELECT_ON)}, got {c.select_on!r}")
    if c.warmup_epochs < 0:
        raise ConfigError(f"--warmup-epochs must be >= 0, got {c.warmup_epochs}")
    if c.shift < 0:
        raise ConfigError(f"--shift must be >= 0, got {c.shift}")
    if c.head_init_std is not None and c.head_init_std <= 0:
        raise ConfigError(f"--head-init-std must be positive, got {c.head_init_std}")
    if c.grad_clip is not None and c.grad_clip <= 0:
        raise ConfigError(f"--grad-clip must be positive, got {c.grad_clip}")
    if c.alpha <= 0:
        raise ConfigError(f"--alpha must be positive, got {c.alpha}")
    if c.bank_rows is not None and c.bank_rows < 1:
        raise ConfigError(f"--bank-rows must be positive, got {c.bank_rows}")
    if c.parallel < 0:
        raise ConfigError(f"--parallel must be >= 0, got {c.parallel}")
    if c.threads is not None and c.threads < 1:
        raise ConfigError(f"--threads must be positive, got {c.threads}")
    if c.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {c.workers}")
    if c.stop_after_epochs is not None and c.stop_after_epochs < 1:
        raise ConfigError(f"stop_after_epochs must be positive, got {c.stop_after_epochs}")


# options whose change makes a saved run another run: --resume refuses them
RESUME_KEYS: Sequence[str] = (
    "dataset", "model", "model_overrides", "pretrained", "seed", "val_fraction", "select_on", "epochs",
    "batch_size", "optimizer", "lr", "weight_decay", "momentum", "schedule", "warmup_epochs", "head_init_std",
    "data_mode", "shift", "alpha", "bank_rows", "bank_fp16", "grad_clip", "recipe",
)
