"""The ``Method`` base class, its typed configs, and the base of the methods that train without labels.

A method is a small ``nn.Module``: its loss, the activation it applies to the raw hash-layer output
``h`` (B, bits), the hooks a trainer calls around epochs and steps, and the tensors it must save
with a run (``state_tensors``). Everything it keeps between steps is a registered buffer, or a
parameter that trains with the network (a classifier; a trainer gives ``method.parameters()`` to its
optimizer), so ``.to(device)`` moves it and ``state_tensors`` finds it. ``trains_on`` says what the loss takes
besides h: the batch's labels (``loss(h, y, index)``), target features of each image
(``loss(h, x)``) or the outputs of a second view of each image (``loss(h1, h2)``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Mapping, Optional, Tuple, Type

import torch
from torch import Tensor, nn

from ..configs import Bounds
from ..errors import CheckpointMismatchError, ConfigError, DataError
from ..limits import MAX_INT_OPTION

if TYPE_CHECKING:
    from ..data.views import TwoViewAugmentation

__all__ = ["InBatchMethod", "Method", "MethodConfig", "MethodDefaults", "TRAINS_ON", "UnsupervisedMethod",
           "pairwise_similarity", "promote", "straight_through_sign"]

FAMILIES = ("symmetric", "asymmetric", "central", "classification", "unsupervised")
# what a loss takes besides the outputs h: the labels of the batch; target features x (B, d) of each
# image (a frozen network's features, or pixel targets); the outputs of a second augmented view
TRAINS_ON = ("labels", "targets", "views")
# the range of every hyper-parameter (a method's own ``positive`` / ``nonnegative`` narrow it)
INTEGER = Bounds(0, MAX_INT_OPTION, integer=True)
REAL = Bounds()


@dataclass(frozen=True)
class MethodDefaults:
    """Published training settings of a method (docs/methods.md; DeepHash-pytorch where it is silent)."""

    optimizer: str  # "rmsprop" | "adam" | "sgd"
    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    momentum: float = 0.0  # of SGD (the unsupervised methods' published runs)
    lr_step_epochs: Optional[int] = None  # the lr is multiplied by lr_step_factor every this many epochs
    lr_step_factor: float = 0.1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def lr_at(self, epoch: int) -> float:
        """The published learning rate of epoch ``epoch`` (0-based): lr x factor^(epoch // step)."""
        if self.lr_step_epochs is None:
            return self.lr
        return self.lr * self.lr_step_factor ** (epoch // self.lr_step_epochs)


def _coerce(method: str, name: str, value: Any, default: Any) -> Any:
    """``value`` checked against the type of the field's default (None default: optional int)."""
    bad = ConfigError(f"{method}: hyper-parameter {name} must be like {default!r}, got {value!r}")
    if default is None:
        if value is None:
            return None
        default = 0
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad
        return value
    if isinstance(value, bool):
        raise bad
    if isinstance(default, int):
        if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_INT_OPTION:
            value = int(value)
        if isinstance(value, float):  # 1.5, 1e100, nan: the range says what is wanted
            INTEGER.check(f"{method}: hyper-parameter {name}", value)
        if not isinstance(value, int):
            raise bad
        return value
    if isinstance(default, float):
        if not isinstance(value, (int, float)):
            raise bad
        try:
            return float(value)
        except OverflowError:  # an int past the largest float
            raise bad from None
    if not isinstance(value, type(default)):
        raise bad
    return value


@dataclass
class MethodConfig:
    """Base of the per-method hyper-parameter dataclasses; round-trips through JSON dicts.

    Subclasses list string fields with their allowed values in ``choices`` and numeric fields that
    must be > 0 in ``positive`` (>= 0 in ``nonnegative``).
    """

    choices: ClassVar[Dict[str, Tuple[str, ...]]] = {}
    positive: ClassVar[Tuple[str, ...]] = ()
    nonnegative: ClassVar[Tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], method: str = "method") -> "MethodConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"unknown hyper-parameter {unknown[0]!r} for {method}; "
                              f"valid: {', '.join(names) or '(none)'}")
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        config = cls(**{k: _coerce(method, k, v, fields[k]) for k, v in d.items()})
        config.check(method)
        return config

    def check(self, method: str) -> None:
        for f in dataclasses.fields(self):  # every number finite, every integer within the limit
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                bounds = INTEGER if isinstance(value, int) else REAL
                bounds.check(f"{method}: hyper-parameter {f.name}", value)
        for name, allowed in self.choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{method}: {name} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        for name in self.positive:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{method}: {name} must be > 0, got {value!r}")
        for name in self.nonnegative:
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{method}: {name} must be >= 0, got {getattr(self, name)!r}")


def promote(h: Tensor) -> Tensor:
    """h in at least float32: fp16 / bf16 outputs of autocast keep the losses' sums accurate."""
    return h.to(torch.promote_types(h.dtype, torch.float32))


def pairwise_similarity(y: Tensor, Y: Tensor) -> Tensor:
    """s (A, B) bool: whether label rows y_i of y (A, C) and Y_j of Y (B, C) share a label, y_i . Y_j > 0
    (multi-hot rows; the product is taken in y's dtype)."""
    return y @ Y.to(y.dtype).t() > 0


def _activate(name: str, h: Tensor) -> Tensor:
    if name == "tanh":
        return torch.tanh(h)
    if name == "sigmoid":
        return torch.sigmoid(h)
    return h


class Method(nn.Module):
    """Base class: a deep-hashing method driven by a trainer (see the package docstring).

    Subclasses set ``name``, ``family``, ``activation``, ``Config`` and ``DEFAULTS`` and implement
    ``loss``; the hooks below are no-ops here. What a training run decides from its method (the
    run's seed, training options passed on, the scratch recipe's learning rate and batch, a schedule fitted to
    the training set, a note under a comparison table) is asked of the class through ``uses_seed``,
    ``run_options``, ``scratch_lr_scale``, ``fit_schedule`` and ``table_note``, so that nothing
    outside a method's own file decides by its name. What its loss is fed is declared the same way:
    ``trains_on`` (labels here; see :class:`UnsupervisedMethod`), ``even_batch`` and ``views``.

    Args:
        bits: code length K.
        n_class: label vector length C.
        num_train: n, the number of training images (rows of ``index``).
        config: an instance of the subclass's ``Config``.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    activation: ClassVar[str] = "none"
    Config: ClassVar[Type[MethodConfig]] = MethodConfig
    DEFAULTS: ClassVar[MethodDefaults]
    # state keys of earlier versions -> their names now, so that older runs still resume
    renamed_state: ClassVar[Dict[str, str]] = {}
    # its config has a ``seed`` field that a training run fills with the run's seed unless given
    uses_seed: ClassVar[bool] = False
    # training options (fields of the run's options) passed as the hyper-parameters of the same name
    # unless given in the method's own parameters
    run_options: ClassVar[Tuple[str, ...]] = ()
    # factor on the shared scratch recipe's learning rate (when no learning rate is given)
    scratch_lr_scale: ClassVar[float] = 1.0
    # batch of the shared scratch recipe for a loss defined on the batch as a whole (a per-batch median,
    # in-batch negatives), where the recipe's small batch changes what is optimised; None: the recipe's
    scratch_batch_size: ClassVar[Optional[int]] = None
    # what ``loss`` takes besides h (one of TRAINS_ON); see UnsupervisedMethod for the other two
    trains_on: ClassVar[str] = "labels"
    # the loss pairs the batch's first half with its second: a trainer keeps every batch even
    even_batch: ClassVar[bool] = False
    # trains_on "views": the augmentation that makes each view (hybridhash.data.views); else None
    views: ClassVar[Optional["TwoViewAugmentation"]] = None
    # the loss also takes ``features=`` (B, F): the model's penultimate features of the batch, the
    # input of its hash layer (a map averaged over its positions), with their gradient
    takes_features: ClassVar[bool] = False
    # networks the method trains: 2 is two copies of the model trained in turn, each pass's loss given
    # ``stream=`` (which copy learns) and ``other=`` (the other copy's raw outputs of the batch, no
    # gradient); the copy ``encode_stream`` is the run's checkpoint, the one that encodes
    streams: ClassVar[int] = 1
    encode_stream: ClassVar[int] = 0
    # whether the comparison selectors ("all", a family) bring it; False: a grid runs it only when named
    in_default_grid: ClassVar[bool] = True

    def __init__(self, bits: int, n_class: int, num_train: int, config: Optional[MethodConfig] = None) -> None:
        super().__init__()
        for key, value in (("bits", bits), ("n_class", n_class), ("num_train", num_train)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{self.name}: {key} must be a positive integer, got {value!r}")
        self.bits, self.n_class, self.num_train = bits, n_class, num_train
        self.config = config if config is not None else self.Config()

    @classmethod
    def published(cls, config: MethodConfig) -> MethodDefaults:
        """The published training settings under hyper-parameters ``config`` (``DEFAULTS`` here)."""
        return cls.DEFAULTS

    @classmethod
    def fit_schedule(cls, params: Dict[str, Any], recipe: str, epochs: int,
                     n_train: int) -> Tuple[Dict[str, Any], int]:
        """(hyper-parameters, trainer epochs) of a run of ``epochs`` under ``recipe`` ("original" |
        "scratch") on ``n_train`` training images, from the hyper-parameters given (``params``, not
        changed in place); here both unchanged."""
        return params, epochs

    @classmethod
    def table_note(cls, config: MethodConfig, run: Mapping[str, Any], given: Mapping[str, Any],
                   n_train: int, wall_record: str) -> Optional[str]:
        """A note under a comparison table on how this method's run was adapted, or None.

        ``config``: the run's hyper-parameters; ``run``: its recorded training options; ``given``:
        the hyper-parameters the comparison gave by hand; ``wall_record``: the file of a comparison
        cell that records its whole wall time.
        """
        return None

    @property
    def defaults(self) -> MethodDefaults:
        return self.published(self.config)

    @property
    def rows_per_epoch(self) -> int:
        """Training rows one trainer epoch goes over (ADSH: its sample)."""
        return self.num_train

    @property
    def total_epochs(self) -> int:
        """Trainer epochs of a run with the published settings."""
        return self.defaults.epochs

    def extra_repr(self) -> str:
        return f"bits={self.bits}, n_class={self.n_class}, num_train={self.num_train}, {self.config}"

    def activate(self, h: Tensor) -> Tensor:
        """The method's activation of raw outputs h (B, bits); codes are sign(h) whatever it is."""
        return _activate(self.activation, h)

    def loss(self, h: Tensor, y: Tensor, index: Tensor, *,
             gathered: Optional[Tuple[Tensor, Tensor, Tensor]] = None) -> Tensor:
        """Scalar loss of the local batch: h (B, bits) raw outputs, y (B, C), index (B,) long."""
        raise NotImplementedError

    def forward(self, h: Tensor, y: Tensor, index: Tensor, *, gathered=None) -> Tensor:
        return self.loss(h, y, index, gathered=gathered)

    # hooks; see the package docstring for the order a trainer calls them in
    def prepare(self, train_labels: Tensor, generator: Optional[torch.Generator] = None) -> None:
        """Once before training, with the (n, C) labels of the training set."""

    def on_epoch_start(self, epoch: int, step: int) -> None:
        """Before each epoch (0-based), with the number of optimizer steps taken so far."""

    def on_step(self, step: int) -> None:
        """Before each optimizer step, with the number of steps taken so far."""

    def epoch_rows(self, epoch: int, generator: Optional[torch.Generator] = None) -> Optional[Tensor]:
        """Rows of the training set this epoch iterates over (LongTensor, CPU); None: all of them."""
        return None

    def on_epoch_end(self, epoch: int) -> None:
        """After the last step of each epoch."""

    def facts(self) -> Dict[str, Any]:
        """What a run should record about this method beyond its config (e.g. CSQ's center distances)."""
        return {}

    def make_head(self, in_features: int) -> Optional[nn.Module]:
        """A hash head to use instead of the model's linear hash layer; None: keep the model's."""
        return None

    # state saved with a run
    def state_tensors(self) -> Dict[str, Tensor]:
        """Every buffer and every parameter the method owns (a classifier trained with the network),
        detached and contiguous (safetensors-ready); restore with ``load_state_tensors``."""
        return {k: v.detach().contiguous().clone() for k, v in self._state_items()}

    def _state_items(self):
        return [*self.named_parameters(), *self.named_buffers()]

    @torch.no_grad()
    def load_state_tensors(self, tensors: Dict[str, Tensor]) -> None:
        own = dict(self._state_items())
        tensors = {self.renamed_state.get(k, k): v for k, v in tensors.items()}
        if set(tensors) != set(own):
            missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
            raise CheckpointMismatchError(f"{self.name} state: missing {missing}, unexpected {extra}")
        for key, buf in own.items():
            if tuple(tensors[key].shape) != tuple(buf.shape):
                raise CheckpointMismatchError(f"{self.name} state {key} has shape {tuple(tensors[key].shape)}, "
                                              f"expected {tuple(buf.shape)} (other bits, classes or training set?)")
            buf.copy_(tensors[key].to(buf.device, buf.dtype))

    def check_batch(self, h: Tensor, y: Tensor, index: Tensor) -> Tensor:
        """Validate one batch; returns ``index`` as a long tensor on h's device."""
        if not isinstance(h, Tensor) or h.dim() != 2 or h.shape[1] != self.bits:
            raise DataError(f"{self.name}: h must be (B, {self.bits}), got {tuple(getattr(h, 'shape', ()))}")
        if not isinstance(y, Tensor) or tuple(y.shape) != (h.shape[0], self.n_class):
            raise DataError(f"{self.name}: y must be ({h.shape[0]}, {self.n_class}), "
                            f"got {tuple(getattr(y, 'shape', ()))}")
        index = torch.as_tensor(index)
        if (index.dim() != 1 or index.shape[0] != h.shape[0]
                or index.dtype.is_floating_point or index.dtype == torch.bool):
            raise DataError(f"{self.name}: index must be an integer tensor of shape ({h.shape[0]},)")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_train):
            raise DataError(f"{self.name}: index holds rows outside [0, {self.num_train})")
        return index.to(device=h.device, dtype=torch.long)


class InBatchMethod(Method):
    """A method whose loss compares the batch with itself and keeps no state between steps.

    Subclasses implement ``batch_loss(h, y)`` on h promoted to float32 and y in h's dtype.
    """

    def loss(self, h: Tensor, y: Tensor, index: Tensor, *,
             gathered: Optional[Tuple[Tensor, Tensor, Tensor]] = None) -> Tensor:
        self.check_batch(h, y, index)  # gathered rows are not needed: nothing is kept
        h = promote(h)
        return self.batch_loss(h, y.to(h.dtype))

    def batch_loss(self, h: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError


class _StraightThroughSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def straight_through_sign(x: Tensor) -> Tensor:
    """sign(x) forward (an exact 0 stays 0, as the published codes take it), the identity backward;
    any shape."""
    return _StraightThroughSign.apply(x)


def _shape(t: Any) -> Tuple[int, ...]:
    return tuple(getattr(t, "shape", ()))


class UnsupervisedMethod(Method):
    """A method that never reads a label: its ``loss`` takes the raw outputs h (B, bits) and what the
    method ``trains_on``:

    - ``"targets"``: ``loss(h, x)``, x (B, d) the target features of the same images, in the same
      order: a frozen network's features (the published form), or :func:`hybridhash.data.targets.pixel_targets`
      when the whole model trains from scratch. x is treated as a constant (detached).
    - ``"views"``: ``loss(h1, h2)``, the outputs of two augmented views of the same B images (row i
      of each is image i), each view made by the method's ``views`` augmentation.

    ``prepare`` ignores its labels (a trainer may pass None), there is no ``index`` and no
    ``gathered``: under several processes each one's loss is of its local batch. Subclasses
    implement ``batch_loss(a, b)`` on the checked inputs, promoted to at least float32.
    """

    family = "unsupervised"
    trains_on = "targets"

    def prepare(self, train_labels: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> None:
        """Once before training; the labels are not read (None is fine)."""

    def check_inputs(self, a: Tensor, b: Tensor) -> None:
        """Raise DataError naming what is wrong with one batch (a = h; b = x or h2)."""
        what = "x" if self.trains_on == "targets" else "h2"
        first = "h" if self.trains_on == "targets" else "h1"
        if not isinstance(a, Tensor) or a.dim() != 2 or a.shape[1] != self.bits or not a.is_floating_point():
            raise DataError(f"{self.name}: {first} must be a float tensor (B, {self.bits}), got {_shape(a)}")
        B = a.shape[0]
        if self.trains_on == "targets":
            ok = isinstance(b, Tensor) and b.dim() == 2 and b.shape[0] == B and b.shape[1] >= 1
            want = f"({B}, d), the target features of the batch's {B} images"
        else:
            ok = isinstance(b, Tensor) and tuple(b.shape) == tuple(a.shape)
            want = f"({B}, {self.bits}), the outputs of the second view of the same {B} images"
        if not ok or not b.is_floating_point():
            raise DataError(f"{self.name}: {what} must be a float tensor {want}, got {_shape(b)}")
        if B < 1:
            raise DataError(f"{self.name}: the batch is empty")
        if self.even_batch and B % 2:
            raise DataError(f"{self.name}: the batch pairs its first half with its second, so it needs an even "
                            f"number of rows, got {B}; use an even batch size and drop the last batch")

    def loss(self, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]  (no labels, no index)
        """Scalar loss of the batch: (h, x) or (h1, h2) as ``trains_on`` says (see the class)."""
        self.check_inputs(a, b)
        if self.trains_on == "targets":  # x keeps its own precision for its cosines
            return self.batch_loss(promote(a), promote(b).detach())
        dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
        return self.batch_loss(a.to(dtype), b.to(dtype))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        return self.loss(a, b)

    def batch_loss(self, a: Tensor, b: Tensor) -> Tensor:
        raise NotImplementedError
