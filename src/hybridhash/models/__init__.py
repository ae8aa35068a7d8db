"""Hashing networks: HybridHash and its presets (:mod:`.hybridhash`, its attention layers in
:mod:`.attention`), any timm backbone with a linear hash layer (:mod:`.backbone`), a small CNN
(:mod:`.cnn`), a fitted training-free baseline on pixels or pre-hash features (:mod:`.shallow`,
chosen by name in :mod:`.features`), what every one offers (:mod:`.base`), a hashing method's own
head (:mod:`.heads`), the name registry (:mod:`.registry`), building by name and loading checkpoints
(:mod:`.factory`), weights in and out (:mod:`.weights`)."""
from .backbone import BackboneConfig, BackboneHash, LinearHashHead, load_timm_weights
from .cnn import CnnConfig, CnnHash
from .factory import build_config, config_from_dict, create_model, from_pretrained
from .hybridhash import (
    GlobalAttention,
    HashHead,
    HybridHash,
    HybridHashConfig,
    InteractionModule,
    convert_original_state_dict,
)
from .features import feature_network
from .registry import list_models
from .shallow import ShallowConfig, ShallowHashModel
from .weights import (
    LoadReport,
    check_state_dict,
    fingerprint_state_dict,
    load_checked,
    load_nest_weights,
    model_fingerprint,
    read_config,
    read_state_dict,
    save_pretrained,
    weights_fingerprint,
)

__all__ = [
    "BackboneConfig", "BackboneHash", "CnnConfig", "CnnHash", "LinearHashHead", "load_timm_weights",
    "GlobalAttention", "HashHead", "HybridHash", "HybridHashConfig", "InteractionModule", "LoadReport",
    "build_config", "check_state_dict", "config_from_dict", "convert_original_state_dict", "create_model",
    "fingerprint_state_dict", "from_pretrained", "list_models", "load_checked", "load_nest_weights",
    "model_fingerprint", "read_config", "read_state_dict", "save_pretrained", "weights_fingerprint",
    "ShallowConfig", "ShallowHashModel", "feature_network",
]
