"""Deep-hashing methods of the field as pluggable pieces (docs/methods.md), timm-style:

    >>> from hybridhash.methods import create_method, list_methods
    >>> list_methods("d*")
    ['daph', 'dbdh', 'dch', 'dfh', 'dhn', 'dnnh', 'dpn', 'dpsh', 'dsdh', 'dsh', 'dshsd', 'dtsh']
    >>> method = create_method("dsh", bits=64, n_class=10, num_train=5000)  # DSH as published

Keyword defaults are the published hyper-parameters; ``create_method(name, ..., **hparams)``
overrides them (an unknown name or field raises ``ConfigError`` listing the valid ones).
``method.config`` is the typed dataclass (``to_dict`` / ``Config.from_dict`` for JSON),
``method.defaults`` the published optimizer, lr, weight decay, batch size and epochs,
``method.family`` "symmetric" | "asymmetric" | "central" | "classification" | "unsupervised" (say it
in every table).

How a trainer drives a method
-----------------------------
The model outputs raw hash-layer values ``h`` (B, bits); the method applies its own activation
inside ``loss``; codes at test time are ``sign(h)`` (+1 where h >= 0) for every method, so
encoding, indexing and search do not depend on the method. ``method.make_head(in_features)``
returns a module to use instead of the model's linear hash layer, or None (only DNNH's
``head="divide_encode"`` returns one). Move the method to the training device with ``.to()``.

Fresh run::

    method = create_method(name, bits, n_class, num_train, **hparams)  # uses_seed: pass seed=<run seed>
    method.prepare(train_labels, generator)      # once; (n, C) float labels of the training set,
                                                 # rows in the order of ``index``. CNNH stage 1 runs
                                                 # here (seed the generator alike on every DDP rank)
    step = 0
    for epoch in range(method.total_epochs):     # or the recipe's epochs; ADSH needs total_epochs
        method.on_epoch_start(epoch, step)       # HashNet sets beta
        rows = method.epoch_rows(epoch, generator)   # None: the whole training set; else a CPU
                                                 # LongTensor of rows (ADSH's sample) to iterate over
        for h, y, index in batches(rows):        # index: (B,) long training-set rows
            method.on_step(step)                 # HashNet per-iteration schedule
            gathered = None                      # DDP: (h_all.detach(), y_all, index_all), every
                                                 # rank's batch gathered, the local one included
            loss = method.loss(h, y, index, gathered=gathered)
            loss.backward(); optimizer.step(); step += 1
        method.on_epoch_end(epoch)               # ADSH updates V after its last epoch of a sample
        save(method.state_tensors())             # with every checkpoint the run keeps

Resume: create the method with the same arguments, ``method.load_state_tensors(saved)`` (it
restores banks, HashNet's beta, ADSH's labels, V and sample, CNNH's H, CSQ's centers) and do NOT
rely on ``prepare`` afterwards (CNNH skips it once H is restored; ADSH re-reads the labels only);
then continue the loop at the saved epoch and step: ``on_epoch_start`` / ``epoch_rows`` give the
same beta and the same sample as before the interruption. For later samples to match an
uninterrupted run too, give ``epoch_rows`` a generator seeded from (run seed, epoch), e.g.
``torch.Generator().manual_seed(seed * 100_003 + epoch)``; it only draws on the first epoch of an
outer iteration.

Rules: call ``loss`` once per optimizer step (bank methods write the batch first; ADSH records
u for its V update); under DDP pass ``gathered`` on every rank so banks, ADSH's U and V stay
identical, and give ``epoch_rows`` a generator seeded the same on every rank (then shard the rows
it returns); in-batch, CNNH and CSQ losses ignore ``gathered``. ``state_tensors()`` is a flat dict
of contiguous tensors, ready for ``safetensors.torch.save_file``.

Methods without labels
----------------------
``method.trains_on`` says what a trainer feeds the loss; every other hook is the same:

- ``"labels"`` (the loop above): ``loss(h, y, index, gathered=...)``.
- ``"targets"`` (``bihalf``, ``greedyhash_unsup``): ``loss(h, x)``, x (B, d) the target features
  of the batch's images: a frozen pretrained network's features (the published form; the trained
  part is the hash layer on them), or, for a model trained from scratch,
  ``hybridhash.data.targets.pixel_targets(images, mean_image)`` of the same input tensors.
- ``"views"`` (``cibhash``): ``loss(h1, h2)``, the outputs of two views of each image, made by
  ``hybridhash.data.views.two_view_transform(preprocess, method.views)``.

These are ``UnsupervisedMethod`` subclasses: ``prepare(None, generator)`` (labels are never read;
they serve evaluation only), no ``index``, no ``gathered``. ``method.even_batch``: the loss pairs
the first half of the batch with the second, so keep every batch even (drop the last one).
``method.defaults`` may name ``"sgd"`` with ``momentum`` and a step schedule
(``defaults.lr_at(epoch)``: lr x ``lr_step_factor`` every ``lr_step_epochs`` epochs).
``method.make_head(in_features)`` of ``cibhash`` is its two-layer head. Codes are sign(h), as for
every method.

Penultimate features: a method that ``takes_features`` (``pcdh``) is also given ``features=`` (B, F),
the input of the model's hash layer for the batch (a map averaged over its positions), with its
gradient. A method's own parameters (``pcdh``'s discrete layer and classifier) train with the
network: give ``method.parameters()`` to the optimizer; ``state_tensors`` holds them too.

Two networks: a method with ``streams == 2`` (``daph``) trains two copies of the model in turn; each
pass's loss is ``loss(h, y, index, other, stream=p)``, h the outputs of copy p (trained), ``other``
those of the other copy for the same images (no gradient). Copy ``encode_stream`` encodes. Such a
method declares ``in_default_grid = False`` when only naming it should bring it into a comparison.

ADSH: with ``config.database == "learned"`` the training-set (database) codes are
``method.learned_codes()`` (its V) instead of the network's; say which in the report. CSQ:
``method.centers`` (C, bits) +-1, ``min_center_distance`` / ``mean_center_distance`` for the log.
MDSHC: ``method.centers`` (C, bits) +-1, made from its seed on first use (``prepare``) and
restored with the state; ``facts()`` reports their target distance, minimum, mean and sweeps.

Scaling to small training sets: ADSH's total epochs are ``iterations * epochs_per_iteration``
over samples of ``min(num_samples, n)`` images; ``adsh.iterations_for(image_steps, n)`` gives the
``iterations`` hparam that matches another method's image-steps (epochs * n). CNNH's stage 1 does
``sweeps`` passes of n * bits coordinate steps (cost n^2 * bits each).

Training-free baselines (``lsh``, ``pcah``, ``itq``, ``sh``) are not ``Method``s: they have no loss
and no trainer hooks. :mod:`.shallow` fits them on streamed features (``make_shallow``,
``load_shallow``, the ``SHALLOW`` registry).
"""
from . import (adsh, bihalf, cibhash, cnnh, csq, dch, dnnh, dpsh, dsh, dtsh, greedyhash_unsup,  # noqa: F401
               hashnet, hybridhash)  # (registers)
from . import pcdh  # noqa: F401  (registers)
from . import dbdh, dfh, dhn, dsdh, idhn, isdh  # noqa: F401,E402  (registers: DeepHash-pytorch's bank methods)
from . import dpn, dshsd, greedyhash, lcdsh, qsmih  # noqa: F401,E402  (registers)
from . import mdshc  # noqa: F401  (registers)
from . import daph  # noqa: F401  (registers: two networks, see Method.streams)
from .base import TRAINS_ON, Method, MethodConfig, MethodDefaults, UnsupervisedMethod
from .registry import create_method, list_methods, method_class, method_defaults, register_method
from .shallow import SHALLOW, ShallowHash, is_training_free, load_shallow, make_shallow

__all__ = ["Method", "MethodConfig", "MethodDefaults", "SHALLOW", "ShallowHash", "TRAINS_ON", "UnsupervisedMethod",
           "create_method", "is_training_free", "list_methods", "load_shallow", "make_shallow", "method_class", "method_defaults",
           "register_method"]
