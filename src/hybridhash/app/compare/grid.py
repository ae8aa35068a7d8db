"""A fair comparison grid: methods x seeds x code lengths on one protocol and one model
(docs/methods.md, "Fair comparison").

One cell = (method, seed): an ordinary training run of every code length into
``OUT/<method>/seed<s>/`` (see :func:`hybridhash.app.train.train`), then its evaluation into
``OUT/<method>/seed<s>/eval/metrics.json``. Every method of a seed trains on one split, drawn once
with that seed as ``train`` draws it, and is selected and scored the same way.

    >>> grid = Grid(methods=("hybridhash", "dsh"), bits=(32, 64), seeds=(0, 1), out="runs/compare")
    >>> grid.run()                      # or grid.run(shard=(0, 2)) on one of two machines
    >>> from hybridhash.app.compare.report import write_report
    >>> doc = write_report(grid)        # OUT/table.md, table.csv, table.json and the figures

Training-free baselines (``lsh``, ``pcah``, ``itq``, ``sh``) are cells too: fitted (no training
loop, so none of its options reach them) on a feature network of their own, raw ``pixels`` at the
grid model's image size unless ``baseline_model`` names another (a model or a checkpoint directory).
``--methods`` also takes selectors beside names (:mod:`.selectors`).

A killed grid resumes cell by cell: a finished cell (its metrics.json holds every code length, on
its seed's split) is skipped, a half-trained one continues with ``resume=True``. Cells come in a
fixed order (seed by seed, methods in the grid's order), so ``shard=(i, n)`` (cells whose index %
n == i) splits a grid over machines or a job array without overlap.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import rundir as R
from ...errors import ConfigError, HybridHashError
from ...fileio import read_json, write_json
from ...limits import MAX_PIXELS
from ...locking import LockedError, exclusive
from ...outdir import claim
from ..train.recipe import NONNEGATIVE_INT, RESUME_KEYS, TrainConfig, check_bits_list
from .selectors import known_methods, saw_labels, unknown_method

GRID_NAME = "grid.json"  # the grid's options, so that --report-only knows what to tabulate
CELL_NAME = "cell.json"  # inside a cell: how the grid ran it (same-optimizer, times)
METRICS_NAME = "metrics.json"
EVAL_DIR = "eval"
# the optimiser settings --same-optimizer imposes on every method
SHARED_SETTINGS = ("optimizer", "lr", "weight_decay", "batch_size")
LOCK_POLL_SECONDS = 1.0  # how often a grid looks again at a cell another process is training


@dataclass(frozen=True)
class Cell:
    """One training run of the grid: ``method`` at ``seed``, every code length, in ``directory``."""

    index: int
    method: str
    seed: int
    directory: Path

    @property
    def name(self) -> str:
        return f"{self.method}/seed{self.seed}"

    @property
    def metrics_path(self) -> Path:
        return self.directory / EVAL_DIR / METRICS_NAME


@dataclass
class Grid:
    """The options of a comparison; every cell's :class:`TrainConfig` is made from them.

    ``epochs``: one override for every method (None: each recipe's). ``same_optimizer``: impose
    ``optimizer``, ``lr``, ``weight_decay``, ``batch_size`` on every method (unset ones: what the
    hybridhash method gets under the model's recipe). ``method_params``: {method: hyper-parameters}.
    ``train_options``: further :class:`TrainConfig` fields for every cell (e.g. ``select_on``; a
    training-free cell gets only those a fit uses). ``baseline_model``: the feature network the
    training-free cells are fitted on (None or "pixels": raw pixels at ``model``'s image size and
    interpolation), with ``baseline_pretrained`` as ``train --pretrained`` takes it.
    """

    methods: Tuple[str, ...]
    bits: Tuple[int, ...] = (16, 32, 64)
    seeds: Tuple[int, ...] = (0, 1, 2)
    out: str = "runs/compare"
    dataset: str = "digits"
    root: Optional[str] = None
    image_root: Optional[str] = None
    model: str = "hybridhash_cpu"
    model_overrides: Dict[str, Any] = field(default_factory=dict)
    pretrained: Optional[str] = None
    val_fraction: float = 0.1
    epochs: Optional[int] = None
    same_optimizer: bool = False
    optimizer: Optional[str] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    batch_size: Optional[int] = None
    method_params: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    train_options: Dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    threads: Optional[int] = None
    parallel: Optional[int] = None
    progress: bool = True
    max_pixels: int = MAX_PIXELS
    baseline_model: Optional[str] = None
    baseline_pretrained: Optional[str] = None

    def __post_init__(self) -> None:
        self.methods, self.bits, self.seeds = tuple(self.methods), tuple(self.bits), tuple(self.seeds)

    # ----------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise ConfigError naming the first option that cannot work (before any work)."""
        from ...methods import is_training_free
        from ..train.build import check_trainable

        known = known_methods()
        if not self.methods:
            raise ConfigError("--methods needs at least one method or selector ('all', 'baselines', ...)")
        for m in self.methods:
            if m not in known:
                raise unknown_method("--methods", m)
            if not is_training_free(m):
                check_trainable(m, "--methods")  # every other cell is a run of the training loop
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"--methods lists a method twice: {' '.join(self.methods)}")
        check_bits_list(self.bits)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds needs distinct seeds >= 0, got {list(self.seeds)}")
        for seed in self.seeds:
            NONNEGATIVE_INT.check("--seeds", seed)  # the range of train's --seed
        for m, params in self.method_params.items():
            if m not in known:
                raise ConfigError(f"--method-params: unknown method {m!r}; known: {', '.join(known)}")
            if not isinstance(params, dict):
                raise ConfigError(f"--method-params: {m!r} needs a JSON object of hyper-parameters, got {params!r}")
        given = [k for k in SHARED_SETTINGS if getattr(self, k) is not None]
        if given and not self.same_optimizer:
            raise ConfigError(f"--{given[0].replace('_', '-')} needs --same-optimizer (without it each method keeps "
                              "its recipe's settings)")
        for cell in self.cells()[:len(self.methods)]:  # each method's options and hyper-parameters, checked now
            if is_training_free(cell.method):
                self.check_fit(self.config_for(cell))
            else:
                self.resolved(self.config_for(cell), n_train=1)

    def check_fit(self, config: TrainConfig) -> None:
        """What a training-free cell's fit would refuse before reading data: its options, its
        hyper-parameters at each code length, and raw-pixel options."""
        from ...methods import make_shallow
        from ...models import build_config
        from ...models.features import PIXELS, is_checkpoint_dir
        from ...models.shallow import PixelsConfig
        from ..train.fit import check_fit_options

        check_fit_options(config)  # nothing of the training loop is passed, so this holds by construction
        for b in config.bits:
            make_shallow(config.method, b, config.seed, **config.method_params)
        if config.model == PIXELS:
            if config.pretrained:
                raise ConfigError("--baseline-pretrained: pixels are their own features and have no weights; drop it")
            PixelsConfig.from_dict(dict(config.model_overrides))
        elif not is_checkpoint_dir(config.model):  # a name: known now, its weights fetched by the fit
            try:
                build_config(config.model, 16)
            except ConfigError as err:
                raise ConfigError(f"--baseline-model: {err}; or a trained checkpoint directory") from None

    def baseline_features(self) -> Tuple[str, Dict[str, Any], Optional[str]]:
        """(model, model_overrides, pretrained) of the training-free cells' feature network."""
        from ...models import build_config
        from ...models.features import PIXELS

        if self.baseline_model not in (None, PIXELS):
            return self.baseline_model, {}, self.baseline_pretrained
        pre = build_config(self.model, 16, **self.model_overrides).preprocess  # what the grid's networks see
        return PIXELS, {"img_size": pre["img_size"], "interpolation": pre["interpolation"]}, self.baseline_pretrained

    def cells(self, shard: Tuple[int, int] = (0, 1)) -> List[Cell]:
        """The cells in their fixed order (seed by seed, methods in order); ``shard`` (i, n) keeps the
        cells whose index % n == i."""
        i, n = shard
        if not (n >= 1 and 0 <= i < n):
            raise ConfigError(f"--shard must be i/n with 0 <= i < n, got {i}/{n}")
        out = Path(self.out)
        every = [(s, m) for s in self.seeds for m in self.methods]
        return [Cell(k, m, s, out / m / f"seed{s}") for k, (s, m) in enumerate(every) if k % n == i]

    def imposed_settings(self) -> Dict[str, Any]:
        """What --same-optimizer gives every method: the options given, the others as the hybridhash
        method gets them under the model's recipe."""
        probe = Cell(0, "hybridhash", self.seeds[0], Path(self.out))
        base = self.resolved(self.config_for(probe, impose=False), n_train=1)
        return {k: getattr(self, k) if getattr(self, k) is not None else getattr(base, k) for k in SHARED_SETTINGS}

    def config_for(self, cell: Cell, impose: bool = True) -> TrainConfig:
        """The training options of ``cell`` (unset ones left to the recipe, as ``train`` fills them); a
        training-free cell's are its fit's, on the baseline features, without training-loop options."""
        from ...methods import is_training_free

        if is_training_free(cell.method):
            from ..train.fit import TRAINING_ONLY

            model, overrides, pretrained = self.baseline_features()
            return TrainConfig(**{
                **dict(dataset=self.dataset, root=self.root, image_root=self.image_root, model=model,
                       model_overrides=overrides, pretrained=pretrained, bits=self.bits, method=cell.method,
                       method_params=dict(self.method_params.get(cell.method, {})), out=str(cell.directory),
                       seed=cell.seed, val_fraction=self.val_fraction, device=self.device, threads=self.threads,
                       progress=self.progress, max_pixels=self.max_pixels),
                **{k: v for k, v in self.train_options.items() if k not in TRAINING_ONLY}})
        kw: Dict[str, Any] = dict(
            dataset=self.dataset, root=self.root, image_root=self.image_root, model=self.model,
            model_overrides=dict(self.model_overrides), pretrained=self.pretrained, bits=self.bits,
            method=cell.method, method_params=dict(self.method_params.get(cell.method, {})),
            out=str(cell.directory), seed=cell.seed, val_fraction=self.val_fraction, epochs=self.epochs,
            device=self.device, threads=self.threads, parallel=self.parallel, progress=self.progress,
            max_pixels=self.max_pixels)
        kw.update(self.train_options)
        if not saw_labels(cell.method) and kw.get("select_on", "val") == "val":
            kw["select_on"] = "copy"  # a row that reads no label in training reads none to pick its epoch
        if self.same_optimizer and impose:
            kw.update(self.imposed_settings())
        return TrainConfig(**kw)

    def resolved(self, config: TrainConfig, n_train: int) -> TrainConfig:
        """``config`` with every option filled as ``train`` fills it for ``n_train`` training images (a
        fit's options as given: it records them unchanged)."""
        from ...methods import is_training_free
        from ...models import build_config
        from ..train.recipe import resolve
        from ..train.run import fit_method, published_settings

        if is_training_free(config.method):
            return config
        img_size = build_config(config.model, 16, **config.model_overrides).img_size
        return fit_method(resolve(config, img_size, published_settings(config)), n_train)

    def protocol(self, seed: int):
        """The split of ``seed``, shared by every method (drawn as ``train`` draws it)."""
        from ...data import load_protocol

        protocol = load_protocol(self.dataset, self.root, image_root=self.image_root, seed=seed,
                                 val_fraction=self.val_fraction, max_pixels=self.max_pixels)
        if not protocol.labelled:  # the table is of mAP, which needs labels
            raise ConfigError(f"compare: {self.dataset} has no labels, and a comparison reports mAP against them; "
                              f"give labelled data (class folders or a labelled list file), or train each method "
                              f"with `hybridhash train` and compare the val_copy_map of their summary.json")
        return protocol

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Grid":
        from ...configs import from_json_dict

        from ..train.recipe import legacy_options

        return from_json_dict(cls, legacy_options(d), f"grid options in {GRID_NAME}")

    @classmethod
    def read(cls, out) -> Optional["Grid"]:
        """The grid last run into ``out`` (its ``grid.json``), or None."""
        path = Path(out) / GRID_NAME
        return cls.from_dict({**read_json(path), "out": str(out)}) if path.is_file() else None

    # ----------------------------------------------------------------------------------------
    def run(self, shard: Tuple[int, int] = (0, 1), *, protocols: Optional[Dict[int, Any]] = None,
            callbacks: Sequence[Callable[..., None]] = (), echo: Callable[[str], None] = print) -> List[Dict[str, Any]]:
        """Train and evaluate every cell of ``shard`` not finished yet; returns one outcome per cell
        ({"cell", "skipped", "seconds", "metrics"}).

        ``protocols``: {seed: Protocol} to use instead of drawing them (tests: a small split); the
        splits drawn are added to it.
        ``callbacks``: passed to ``train`` (see :class:`~.loop.Trainer`). ``echo``: progress lines.
        """
        self.check()
        cells = self.cells(shard)
        protocols = {} if protocols is None else protocols
        for seed in dict.fromkeys(cell.seed for cell in cells):  # data it cannot compare on: refused before --out
            if seed not in protocols:
                protocols[seed] = self.protocol(seed)
        claim_grid(self.out)  # before any cell of a folder of other files is read
        for cell in cells:  # every started cell must be the run this grid asks for: refused now, not hours later
            saved = run_config(cell)
            if saved is not None:
                check_same_run(cell, saved, self.resolved(self.config_for(cell), len(protocols[cell.seed].train)))
        Path(self.out).mkdir(parents=True, exist_ok=True)
        write_json(Path(self.out) / GRID_NAME, {k: v for k, v in self.to_dict().items() if k != "out"})
        from ..train.run import keep_workers

        t_grid = time.perf_counter()
        outcomes: Dict[int, Dict[str, Any]] = {}
        with keep_workers():  # the cells' training processes serve every cell
            self._run_queue(cells, protocols, callbacks, echo, outcomes, t_grid)
        return [outcomes[cell.index] for cell in cells]

    def _run_queue(self, cells: List[Cell], protocols, callbacks, echo, outcomes: Dict[int, Any], t_grid) -> None:
        queue, wait = cells, False
        while queue:  # cells another process holds come back, waited for, after the others
            held = []
            for cell in queue:
                tag = f"[{cells.index(cell) + 1}/{len(cells)}] {cell.name}"
                if wait:
                    echo(f"{tag}: waiting for the other process that holds it")
                outcome = self.run_cell(cell, protocols[cell.seed], callbacks, lambda text: echo(f"{tag}: {text}"),
                                        wait=wait)
                if outcome is None:
                    echo(f"{tag}: another process is training it; back to it after the other cells")
                    held.append(cell)
                    continue
                maps = ", ".join(f"{b} bits {outcome['metrics']['results'][str(b)]['map']:.4f}" for b in self.bits)
                what = "finished earlier, skipped" if outcome["skipped"] else f"done in {outcome['seconds']:.0f} s"
                echo(f"{tag}: {what}; mAP {maps} (grid {time.perf_counter() - t_grid:.0f} s)")
                outcomes[cell.index] = outcome
            queue, wait = held, True

    def run_cell(self, cell: Cell, protocol, callbacks: Sequence[Callable[..., None]] = (),
                 echo: Callable[[str], None] = print, *, wait: bool = True) -> Optional[Dict[str, Any]]:
        """Train ``cell`` (resuming a half-trained one) and evaluate it, as the one writer of its
        directory (:mod:`hybridhash.locking`); a finished one is only read.

        Another process writing the cell is waited for (its cell then found finished, or resumed
        if it died) with ``wait``; without, None is returned at once.
        """
        outcome = self._finished(cell, protocol)
        if outcome is not None:
            return outcome
        while True:
            lock = ExitStack()
            try:
                lock.enter_context(exclusive(cell.directory, what="comparison cell"))
                break
            except LockedError:
                if not wait:
                    return None
                time.sleep(LOCK_POLL_SECONDS)
        with lock:  # the other process may have finished the cell meanwhile
            return self._finished(cell, protocol) or self._train_cell(cell, protocol, callbacks, echo)

    def _finished(self, cell: Cell, protocol) -> Optional[Dict[str, Any]]:
        """The outcome of ``cell`` when it is finished (only read), else None; a started cell must be
        the run this grid asks for."""
        saved = run_config(cell)
        if saved is not None:  # a half-trained or finished cell must be the run this grid asks for
            check_same_run(cell, saved, self.resolved(self.config_for(cell), len(protocol.train)))
        if cell_state(cell, self.bits, protocol.split_record()["hash"]) != "done":
            return None
        return {"cell": cell.name, "skipped": True, "seconds": 0.0, "metrics": read_json(cell.metrics_path)}

    def _train_cell(self, cell: Cell, protocol, callbacks: Sequence[Callable[..., None]], echo) -> Dict[str, Any]:
        """Train and evaluate ``cell``, whose directory's lock the caller holds; ``echo(text)``: progress."""
        import torch

        from ...environment import usable_cores
        from ...methods import is_training_free
        from ..evaluation import evaluate_checkpoints
        from ..train import train

        resume = run_config(cell) is not None
        record = {"method": cell.method, "seed": cell.seed, "same_optimizer": self.same_optimizer}
        claim(cell.directory, "train",
              legacy=lambda d: R.is_run_dir(d) or _written(d / CELL_NAME, ("method", "seed")))
        t0 = time.perf_counter()
        if is_training_free(cell.method):  # a fit is never resumed: a finished one is evaluated, a cut one redone
            fitted = resume and _fit_finished(cell, self.bits)
            echo(("evaluating the fit of" if fitted else "fitting") + f" {' '.join(map(str, self.bits))} bits")
            write_json(cell.directory / CELL_NAME, record)
            if not fitted:
                _clear_fit(cell)
                train(self.config_for(cell), protocol=protocol, locked=True)
        else:
            echo(("resuming" if resume else "training") + f" {' '.join(map(str, self.bits))} bits")
            write_json(cell.directory / CELL_NAME, record)
            train(dataclasses.replace(self.config_for(cell), resume=resume), protocol=protocol, callbacks=callbacks,
                  locked=True)
        t1 = time.perf_counter()
        # the cores the training processes had (hybridhash_cpu on digits, 2 cores: 5.8 s against 6.5 on one)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads or usable_cores())
        try:
            doc = evaluate_checkpoints(cell.directory, cell.directory / EVAL_DIR, protocol=protocol,
                                       device=self.device)
        finally:
            torch.set_num_threads(threads)
        t2 = time.perf_counter()
        # wall times of the session that finished the cell (CNNH's stage 1 included)
        write_json(cell.directory / CELL_NAME, {**record, "train_wall_seconds": round(t1 - t0, 3),
                                                "eval_seconds": round(t2 - t1, 3)})
        return {"cell": cell.name, "skipped": False, "seconds": t2 - t0, "metrics": doc}


def _written(path: Path, keys: Sequence[str]) -> bool:
    """True when ``path`` is a JSON object holding ``keys``: a record the grid wrote before it marked
    its directories (a file of that name with other content is someone else's)."""
    try:
        doc = read_json(path)
    except (OSError, ValueError, UnicodeDecodeError, HybridHashError):
        return False
    return isinstance(doc, dict) and all(k in doc for k in keys)


def _fit_finished(cell: Cell, bits: Sequence[int]) -> bool:
    """Whether a training-free cell's fit wrote every code length (its summary.json is written last)."""
    path = cell.directory / R.SUMMARY_NAME
    return path.is_file() and all(str(b) in read_json(path).get("results", {}) for b in bits)


def _clear_fit(cell: Cell) -> None:
    """Remove what a cut fit left in its cell (the caller holds the cell's lock), so it is redone whole."""
    for name in (R.RUN_NAME, R.SUMMARY_NAME, R.SPLIT_NAME):
        (cell.directory / name).unlink(missing_ok=True)
    for d in [*cell.directory.glob("bits*"), cell.directory / EVAL_DIR]:
        if d.is_dir():
            shutil.rmtree(d)


def claim_grid(out) -> None:
    """Make ``out`` the grid's directory, or refuse a folder of other files (see :mod:`hybridhash.outdir`)."""
    claim(out, "compare", legacy=lambda d: _written(d / GRID_NAME, ("methods", "bits", "seeds")))


def run_config(cell: Cell) -> Optional[Dict[str, Any]]:
    """The resolved training options a cell's run.json records, or None when it never started."""
    path = cell.directory / R.RUN_NAME
    return read_json(path).get("config", {}) if path.is_file() else None


def check_same_run(cell: Cell, saved: Dict[str, Any], resolved: TrainConfig) -> None:
    """Refuse a cell trained with other options than ``resolved`` (those ``--resume`` compares)."""
    now = json.loads(json.dumps(resolved.to_dict()))
    for k in RESUME_KEYS:
        if k in saved and saved[k] != now.get(k):
            raise ConfigError(f"{cell.directory}: {cell.name} was trained with {k}={saved[k]!r}, this grid asks for "
                              f"{now.get(k)!r}; use the same options or another --out")


def cell_state(cell: Cell, bits: Sequence[int], split_hash: Optional[str] = None) -> str:
    """"done" (evaluated at every code length of ``bits``, on the split ``split_hash`` when given),
    "partial" (started: run.json written) or "missing"."""
    if cell.metrics_path.is_file() and (cell.directory / R.RUN_NAME).is_file():
        doc = read_json(cell.metrics_path)
        if all(str(b) in doc.get("results", {}) for b in bits) and split_hash in (None, doc.get("split_hash")):
            return "done"
    return "partial" if (cell.directory / R.RUN_NAME).is_file() else "missing"

