"""Training settings: the options of a run and the defaults (recipes) that fill the ones left unset.

Two recipes:

- ``original``: the published one, for pretrained or full-size (224 px) presets: RMSprop, lr 2.5e-5,
  weight decay 1e-5, no schedule, 15 epochs, evaluation every 3, batch 64, the per-image train
  transforms of the paper (docs/methods.md, hybridhash).
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

from ...configs import COUNT, FRACTION, NONNEGATIVE, NONNEGATIVE_INT, PIXELS, POSITIVE, THREADS, WORKERS, Bounds
from ...configs import from_json_dict, to_json_dict
from ...codes import check_bits
from ...errors import ConfigError
from ...limits import MAX_PIXELS, MAX_THREADS

OPTIMIZERS = ("rmsprop", "adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "step")
# what a method that trains on targets is given as x: pixel targets, or a frozen pretrained network's features
TARGETS = ("pixels", "features")
DATA_MODES = ("stream", "cache")
# what picks the best epoch: val mAP (the label-free copy score where the data has no labels), the test
# queries' mAP (the original's protocol), or the copy score on the validation split even where labels exist
SELECT_ON = ("val", "query", "copy")
# largest image edge the scratch recipe is meant for
SCRATCH_MAX_IMG = 64



def _opt(default: Any, help: str, group: str, bounds: Optional[Bounds] = None, **argparse_kw: Any) -> Any:
    """A field that is also a ``hybridhash train`` option (see :func:`hybridhash.app.commands.train.configure`);
    ``bounds``: the range of a numeric one, checked by :func:`check_numbers`."""
    meta = {"help": help, "group": group, **argparse_kw}
    if bounds is not None:
        meta["bounds"] = bounds
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` means "the recipe's default".

    Each field's metadata holds its command-line help, group and argparse settings, so the
    ``train`` command's options are made from this class and cannot drift from it.
    """

    dataset: str = _opt("digits", "protocol name (digits, cifar10, ..., list:<dir>, folder:<dir>)", "data")
    # --data-root, as in every command (--root before)
    root: Optional[str] = _opt(None, "the dataset's folder: CIFAR-10's batches, the list files, or the class folders "
                               "(not needed for digits)", "data", flag="--data-root", old=("--root",), metavar="DIR")
    image_root: Optional[str] = _opt(None, "the folder a list file's relative image paths start from", "data",
                                     metavar="DIR")
    download: bool = _opt(False, "download CIFAR-10 through torchvision when absent", "data")
    model: str = _opt("hybridhash_cpu", "a HybridHash preset, cnn_cpu, or any timm model name (see `hybridhash "
                      "models`)", "model")
    model_overrides: Dict[str, Any] = _opt({}, "preset options to change, e.g. '{\"depths\": [1, 1, 1]}'", "model",
                                           metavar="JSON", parse="json_object")
    pretrained: Optional[str] = _opt(None, "'imagenet' (timm's ImageNet weights of the model) or a weights "
                                     "file (.safetensors, or .pth read with weights_only=True)", "model")
    bits: Tuple[int, ...] = _opt((16, 32, 48, 64), "code lengths, one model each", "model", nargs="+")
    method: str = _opt("hybridhash", "hashing method (see `hybridhash methods`)", "method")
    method_params: Dict[str, Any] = _opt({}, "the method's hyper-parameters to change, e.g. '{\"gamma\": 10}' "
                                         "(see `hybridhash methods NAME`)", "method", metavar="JSON",
                                         parse="json_object")
    out: str = _opt("runs/train", "run directory", "run")
    seed: int = _opt(0, "seed of the split, the init and every random draw", "run", NONNEGATIVE_INT)
    val_fraction: float = _opt(0.1, "share of the training images held out for selection", "data", FRACTION)
    select_on: str = _opt("val", "what picks the best epoch: 'val' the validation split's mAP (its label-free copy "
                          "score on data without labels); 'copy' that copy score even where labels exist (a "
                          "selection that reads no label); 'query' the test queries' mAP, as the original (not a "
                          "fair protocol)", "run", choices=SELECT_ON)
    # recipe-filled
    epochs: Optional[int] = _opt(None, "training epochs", "optimisation", COUNT)
    batch_size: Optional[int] = _opt(None, "images per step (per process)", "optimisation", COUNT)
    optimizer: Optional[str] = _opt(None, "optimiser", "optimisation", choices=OPTIMIZERS)
    lr: Optional[float] = _opt(None, "peak learning rate", "optimisation", POSITIVE)
    weight_decay: Optional[float] = _opt(None, "weight decay of weights (not of biases, norms, embeddings)",
                                         "optimisation", NONNEGATIVE)
    momentum: Optional[float] = _opt(None, "RMSprop or SGD momentum", "optimisation", Bounds(0, 1, high_open=True))
    schedule: Optional[str] = _opt(None, "learning-rate schedule after the warm-up", "optimisation",
                                   choices=SCHEDULES)
    lr_step_epochs: Optional[int] = _opt(None, "step schedule: multiply the lr by --lr-step-factor every this many "
                                         "epochs", "optimisation", COUNT)
    lr_step_factor: Optional[float] = _opt(None, "step schedule: the factor", "optimisation", POSITIVE)
    warmup_epochs: Optional[float] = _opt(None, "linear warm-up length", "optimisation", NONNEGATIVE)
    head_init_std: Optional[float] = _opt(None, "std of the init of the layer that makes the bits", "optimisation",
                                          POSITIVE)
    data_mode: Optional[str] = _opt(None, "stream: per-image transforms in a DataLoader; cache: images "
                                    "preprocessed once, held in memory, shifted per batch", "data",
                                    choices=DATA_MODES)
    shift: Optional[int] = _opt(None, "cache mode: largest random shift in pixels (less than the image size)", "data",
                                 NONNEGATIVE_INT)
    eval_every: Optional[int] = _opt(None, "evaluate for selection every N epochs (and at the end)", "run", COUNT)
    # not recipe-filled: unset stays unset, so a recorded run chooses again on the machine that re-runs it
    amp: Optional[bool] = _opt(None, "bf16 autocast, fp32 weights (unset: where the device has bf16 units, a "
                               "CUDA GPU or a CPU with AVX512-BF16/AMX-BF16; --amp on a CPU without them: "
                               "emulated, slower; --no-amp: fp32)", "optimisation", parse="tristate")
    grad_clip: Optional[float] = _opt(None, "clip the gradient norm at this value", "optimisation", POSITIVE)
    targets: str = _opt("pixels", "methods that train on targets: x = the input pixels minus the training set's "
                        "mean image (from scratch), or 'features' of the --pretrained backbone, frozen (their "
                        "published form)", "method", choices=TARGETS)
    # the hybridhash method's loss (other methods take --method-params)
    alpha: float = _opt(0.5, "hybridhash: the loss's inner-product scale", "method", POSITIVE)
    bank_rows: Optional[int] = _opt(None, "hybridhash: rows of the loss's memory bank (default: the training set "
                                    "size; the original used 10000 on CIFAR-10)", "method", COUNT)
    bank_fp16: bool = _opt(False, "hybridhash: keep the bank in float16 as the original", "method")
    # machinery
    device: str = _opt("auto", "cpu, cuda, cuda:1, or auto", "run")
    workers: int = _opt(0, "data-loading processes (0: load in the main process)", "data", WORKERS, metavar="N")
    max_pixels: int = _opt(MAX_PIXELS, "refuse images with more pixels (width * height) than this, unread", "data",
                           PIXELS, metavar="N")
    eval_batch_size: int = _opt(256, "images per forward when encoding for selection", "run", COUNT)
    save_every: int = _opt(1, "save last/ every N epochs", "run", COUNT)
    resume: bool = _opt(False, "continue the run in --out from its last saved epoch", "run")
    tensorboard: bool = _opt(False, "also log to OUT/bits{N}/tensorboard", "run")
    progress: bool = _opt(True, "show progress bars (on a terminal) and per-epoch lines", "run", parse="progress",
                          old=("--quiet",))
    threads: Optional[int] = _opt(None, "torch CPU threads (per process)", "run", THREADS, metavar="N")
    # code lengths trained at once in separate CPU processes (0: as many as cores and code lengths)
    parallel: Optional[int] = _opt(None, "CPU only: code lengths trained at once in separate processes (0: one per "
                                   "core; default: by recipe, 0 for small presets, 1 otherwise)", "run",
                                   Bounds(0, MAX_THREADS, integer=True))
    # test hook: return after this many epochs have been saved, as a killed run would leave it
    stop_after_epochs: Optional[int] = _opt(None, "", "run", COUNT, hidden=True)
    recipe: Optional[str] = _opt(None, "force a recipe (default: by model)", "optimisation",
                                 choices=("original", "scratch"))

    def __post_init__(self) -> None:
        self.bits = tuple(int(b) for b in self.bits)

    def to_dict(self) -> Dict[str, Any]:
        return to_json_dict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        return from_json_dict(cls, legacy_options(d), "training options")


def legacy_options(d: Dict[str, Any]) -> Dict[str, Any]:
    """Recorded options in today's names: ``quiet`` (before ``progress``) becomes ``progress``."""
    if "quiet" not in d or "progress" in d:
        return dict(d)
    d = dict(d)
    quiet = d.pop("quiet")
    d["progress"] = not quiet if isinstance(quiet, bool) else quiet
    return d


def original_recipe() -> Dict[str, Any]:
    """The published run's settings (docs/methods.md, hybridhash)."""
    return dict(epochs=15, batch_size=64, optimizer="rmsprop", lr=2.5e-5, weight_decay=1e-5, momentum=0.0,
                schedule="constant", warmup_epochs=0.0, head_init_std=None, data_mode="stream", shift=0,
                eval_every=3, grad_clip=None, parallel=1)


def scratch_recipe(img_size: int, method: str = "hybridhash") -> Dict[str, Any]:
    """Settings that converge from random weights for small models on small images (docs/methods.md),
    shared by every method; the learning rate is scaled by the method's ``scratch_lr_scale`` (the
    methods whose codes collapse at it) and a loss defined on the whole batch keeps the batch it names
    (``scratch_batch_size``); the table of `compare` shows what each cell used."""
    from ...methods import method_class

    cls = method_class(method)
    return dict(epochs=30, batch_size=cls.scratch_batch_size or 16, optimizer="adamw", lr=2e-3 * cls.scratch_lr_scale,
                weight_decay=1e-4, momentum=None,
                schedule="cosine", warmup_epochs=1.0, head_init_std=0.1, data_mode="cache",
                shift=max(1, round(img_size / 16)), eval_every=5, grad_clip=5.0, parallel=0)


def choose_recipe(img_size: int, pretrained: Optional[str]) -> str:
    """``scratch`` for random-init models on images of at most 64 px, ``original`` otherwise."""
    return "scratch" if not pretrained and img_size <= SCRATCH_MAX_IMG else "original"


# the settings a method publishes, which replace the original recipe's for that method
METHOD_SETTINGS = ("optimizer", "lr", "weight_decay", "batch_size", "epochs", "momentum")


def recipe_defaults(name: str, img_size: int, method: str,
                    method_defaults: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The settings recipe ``name`` gives ``method`` on images of ``img_size`` px (see :func:`resolve`)."""
    defaults = original_recipe() if name == "original" else scratch_recipe(img_size, method)
    if name == "original" and method_defaults:
        defaults.update({k: method_defaults[k] for k in METHOD_SETTINGS if k in method_defaults})
        if method_defaults.get("lr_step_epochs"):  # SGD runs published with a step decay
            defaults.update(schedule="step", lr_step_epochs=method_defaults["lr_step_epochs"],
                            lr_step_factor=method_defaults.get("lr_step_factor", 0.1))
    return defaults


def resolve(config: TrainConfig, img_size: int, method_defaults: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """A copy of ``config`` with every recipe-filled option set, checked.

    ``method_defaults``: the method's published optimiser, lr, weight decay, batch size and epochs
    (``Method.defaults.to_dict()``); under the ``original`` recipe (fine-tuning pretrained or
    full-size models) they replace HybridHash's, so each method keeps its own published settings.
    The ``scratch`` recipe is shared by every method.
    """
    check_numbers(config)  # before the recipe's values hide a nan or a negative number given
    name = config.recipe or choose_recipe(img_size, config.pretrained)
    if name not in ("original", "scratch"):
        raise ConfigError(f"unknown recipe {name!r}; use original or scratch")
    defaults = recipe_defaults(name, img_size, config.method, method_defaults)
    filled = {k: (getattr(config, k) if getattr(config, k) is not None else v) for k, v in defaults.items()}
    out = dataclasses.replace(config, recipe=name, **filled)
    check(out)
    if out.shift >= img_size:
        raise ConfigError(f"--shift must be less than the model's image size {img_size}, got {out.shift}")
    return out


def check_bits_list(bits: Sequence[int]) -> None:
    """Raise ConfigError unless ``bits`` lists distinct code lengths that pass :func:`~hybridhash.codes.check_bits`."""
    if not bits:
        raise ConfigError("--bits needs at least one code length")
    for b in bits:
        check_bits(b, "--bits")
    if len(set(bits)) != len(bits):
        raise ConfigError(f"--bits lists a code length twice: {list(bits)}")


def option_name(field_name: str) -> str:
    """``--warmup-epochs`` for ``warmup_epochs``."""
    return "--" + field_name.replace("_", "-")


def check_numbers(c: TrainConfig) -> None:
    """Raise ConfigError naming the first numeric option outside the ``bounds`` of its field (nan and
    infinities included); unset ones (None) are left to the recipe."""
    for f in dataclasses.fields(c):
        value = getattr(c, f.name)
        if "bounds" in f.metadata and value is not None:
            f.metadata["bounds"].check(option_name(f.name), value)


def check(c: TrainConfig) -> None:
    """Raise ConfigError naming the first option that cannot work (``c`` resolved: every recipe-filled
    option set)."""
    check_bits_list(c.bits)
    for name in ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "shift", "eval_every", "parallel"):
        if getattr(c, name) is None:
            raise ConfigError(f"{option_name(name)} must be set")
    check_numbers(c)
    if c.optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {c.optimizer!r}")
    if c.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {c.schedule!r}")
    if c.data_mode not in DATA_MODES:
        raise ConfigError(f"--data-mode must be one of {', '.join(DATA_MODES)}, got {c.data_mode!r}")
    if c.schedule == "step" and (c.lr_step_epochs is None or c.lr_step_factor is None):
        raise ConfigError("--schedule step needs --lr-step-epochs and --lr-step-factor")
    if c.select_on not in SELECT_ON:
        raise ConfigError(f"--select-on must be one of {', '.join(SELECT_ON)}, got {c.select_on!r}")


def selection_metric(select_on: str, labelled: bool) -> str:
    """The score a run's best epoch is chosen by: ``val_map``, ``query_map`` or ``val_copy_map``."""
    if select_on == "copy" or (select_on == "val" and not labelled):
        return "val_copy_map"
    return f"{select_on}_map"


# Options that make a loss diverge when set above the recipe's value (+1) or below it (-1): the
# first to name when the loss of a run becomes nan or infinite.
RISKY_SETTINGS: Dict[str, int] = {"lr": 1, "head_init_std": 1, "grad_clip": 1, "warmup_epochs": -1}


def divergence_hint(c: TrainConfig, defaults: Dict[str, Any], method: str,
                    method_params: Dict[str, Tuple[float, float]]) -> str:
    """What to try when the loss of run ``c`` became nan or infinite.

    ``defaults``: the recipe's settings for the run (:func:`recipe_defaults`); ``method_params``:
    {name: (value, default)} of the method's real-valued hyper-parameters. Names the options set on
    the risky side of the recipe's value and the hyper-parameters set above their defaults (in
    magnitude); when there are none, a lower learning rate.
    """
    causes = []
    for name, side in RISKY_SETTINGS.items():
        value, default = getattr(c, name), defaults.get(name)
        if value is None or default is None:
            continue
        if (value - default) * side > 0:
            causes.append(f"{option_name(name)} {value:g} (the recipe's {default:g})")
    for name, (value, default) in method_params.items():
        if abs(value) > abs(default):
            causes.append(f"{method}'s {name} {value:g} (its default {default:g})")
    if not causes:
        return f"no option is above its default: try a lower --lr (now {c.lr:g}) or a --grad-clip"
    return (f"likely cause{'s' if len(causes) > 1 else ''}, set beyond the defaults: {', '.join(causes)}; "
            f"bring {'them back towards their defaults' if len(causes) > 1 else 'it back towards its default'}")


# options whose change makes a saved run another run: --resume refuses them
RESUME_KEYS: Sequence[str] = (
    "dataset", "model", "model_overrides", "pretrained", "method", "method_params", "seed", "val_fraction", "select_on", "epochs",
    "batch_size", "optimizer", "lr", "weight_decay", "momentum", "schedule", "warmup_epochs", "head_init_std",
    "data_mode", "shift", "alpha", "bank_rows", "bank_fp16", "grad_clip", "recipe", "targets", "lr_step_epochs",
    "lr_step_factor",
)
