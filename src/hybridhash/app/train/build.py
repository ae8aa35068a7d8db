"""What a training config names: the network and the hashing method, built for one code length."""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from .recipe import TrainConfig

def build_model(config: TrainConfig, bits: int) -> nn.Module:
    """The network ``config`` names, initialised from the current torch seed."""
    from ...models import create_model

    model = create_model(config.model, bits=bits, pretrained=config.pretrained, **config.model_overrides)
    if config.head_init_std is not None:
        with torch.no_grad():
            nn.init.normal_(model.hash_head.to_bits.weight, std=config.head_init_std)
    return model


def method_params(config: TrainConfig) -> Dict[str, Any]:
    """The hyper-parameters ``config`` gives its method: ``--method-params``, then, unless given there,
    the run's seed (a method that ``uses_seed``) and the training options the method names in its
    ``run_options`` (HybridHash's ``--alpha`` and bank options)."""
    from ...methods import method_class

    cls = method_class(config.method)
    params = dict(config.method_params)
    if cls.uses_seed:
        params.setdefault("seed", config.seed)
    for name in cls.run_options:
        params.setdefault(name, getattr(config, name))
    return params


def build_method(config: TrainConfig, bits: int, n_class: int, num_train: int) -> nn.Module:
    """The hashing method ``config`` names (see :mod:`hybridhash.methods`)."""
    from ...methods import create_method

    return create_method(config.method, bits, n_class, num_train, **method_params(config))
