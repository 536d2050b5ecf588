"""Audio backbones (ConvNeXt, FastViT, ConvFormer; DCLS or depthwise) and their checkpoints.

``create_model(name, checkpoint_path=None, use_ema=False, **kwargs)`` builds one of
``list_models()``; ``load_checkpoint`` reads released upstream ``.pth`` files, our Lightning
checkpoints and plain state_dicts; ``save_upstream_checkpoint`` writes the upstream layout.
"""

from .checkpoint import (
    SAFE_GLOBALS,
    CheckpointError,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    build_loaded_model,
    extract_state_dict,
    infer_model_name,
    layout_of,
    load_checkpoint,
    load_state_dict_checked,
    read_checkpoint,
    resolve_checkpoint_path,
    save_upstream_checkpoint,
    to_model_state_dict,
    to_upstream_state_dict,
)
from .dclsify import dcls_layers, dcls_position_parameters, dclsify, fold_dcls, is_depthwise_conv, tied_state_keys
from .factory import create_model
from .fastvit_audio import reparameterize_fastvit
from .param_count import (
    PAPER_TABLE_MILLIONS,
    UPSTREAM_PARAM_COUNTS,
    count_parameters,
    format_parameter_table,
    parameter_table,
)
from .registry import DCLS_DEFAULTS, MODEL_SPECS, ModelSpec, build_model, describe_models, get_spec, list_models
from .released import RELEASED_CHECKPOINTS, checkpoint_dirs

__all__ = [
    "create_model",
    "build_model",
    "list_models",
    "describe_models",
    "get_spec",
    "ModelSpec",
    "MODEL_SPECS",
    "DCLS_DEFAULTS",
    "dclsify",
    "dcls_layers",
    "fold_dcls",
    "is_depthwise_conv",
    "tied_state_keys",
    "dcls_position_parameters",
    "reparameterize_fastvit",
    "load_checkpoint",
    "save_upstream_checkpoint",
    "infer_model_name",
    "layout_of",
    "read_checkpoint",
    "extract_state_dict",
    "build_loaded_model",
    "to_model_state_dict",
    "to_upstream_state_dict",
    "load_state_dict_checked",
    "resolve_checkpoint_path",
    "SAFE_GLOBALS",
    "CheckpointError",
    "CheckpointMismatchError",
    "UnsafeCheckpointError",
    "count_parameters",
    "parameter_table",
    "format_parameter_table",
    "UPSTREAM_PARAM_COUNTS",
    "PAPER_TABLE_MILLIONS",
    "RELEASED_CHECKPOINTS",
    "checkpoint_dirs",
]
