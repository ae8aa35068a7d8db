"""HybridHash models: presets by name, weights in and out."""
from .hybridhash import (
    GlobalAttention,
    HashHead,
    HybridHash,
    HybridHashConfig,
    InteractionModule,
    build_config,
    convert_original_state_dict,
    create_model,
)
from .registry import list_models
from .weights import (
    LoadReport,
    check_state_dict,
    fingerprint_state_dict,
    from_pretrained,
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
