"""FCN models: backbones, the skip head, surgery and weight import."""
from .dense import DenseFCN, dense
from .fcn import FCN, HeadSpec
from .preprocessing import Preprocessing
from .registry import MODELS, create_model, list_models

__all__ = ["FCN", "DenseFCN", "HeadSpec", "MODELS", "Preprocessing", "create_model", "dense", "list_models"]
