"""What a training config names: the network and the hashing method, built for one code length."""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from ...errors import ConfigError
from .recipe import TrainConfig

# what the training loop feeds a method's loss (a method's ``trains_on``): the labels of the batch, target
# features of its images, two views of each (see .feeds)
TRAINER_FEEDS = ("labels", "targets", "views")


def trainable_methods() -> List[str]:
    """The registered methods the training loop can feed, sorted."""
    from ...methods import list_methods, method_class

    return [m for m in list_methods() if method_class(m).trains_on in TRAINER_FEEDS]


def check_trainable(method: str, option: str = "--method") -> None:
    """Raise ConfigError unless the training loop can feed ``method`` what it trains on (an unknown
    name: the registry's error)."""
    from ...methods import method_class

    cls = method_class(method)
    if cls.trains_on not in TRAINER_FEEDS:
        raise ConfigError(f"{option}: {method} is {cls.family} and trains on {cls.trains_on}, which the training "
                          f"loop does not feed yet (it feeds {', '.join(TRAINER_FEEDS)}); choose one of "
                          f"{', '.join(trainable_methods())}")


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
