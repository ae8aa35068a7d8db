"""hybridhash: deep-hashing image retrieval with HybridHash."""
from .models import (
    HybridHash,
    HybridHashConfig,
    convert_original_state_dict,
    create_model,
    from_pretrained,
    list_models,
    load_nest_weights,
)

__version__ = "0.1.0"

__all__ = [
    "HybridHash", "HybridHashConfig", "__version__", "convert_original_state_dict", "create_model",
    "from_pretrained", "list_models", "load_nest_weights",
]
