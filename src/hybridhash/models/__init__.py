"""HybridHash models: the architecture and its presets (:mod:`.hybridhash`), the name registry
(:mod:`.registry`), building by name and loading checkpoints (:mod:`.factory`), weights in and out
(:mod:`.weights`)."""
from .factory import build_config, create_model, from_pretrained
from .hybridhash import (
    GlobalAttention,
    HashHead,
    HybridHash,
    HybridHashConfig,
    InteractionModule,
    convert_original_state_dict,
)
from .registry import list_models
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
)

__all__ = [
    "GlobalAttention", "HashHead", "HybridHash", "HybridHashConfig", "InteractionModule", "LoadReport",
    "build_config", "check_state_dict", "convert_original_state_dict", "create_model", "fingerprint_state_dict",
    "from_pretrained", "list_models", "load_checked", "load_nest_weights", "model_fingerprint", "read_config",
    "read_state_dict", "save_pretrained",
]
