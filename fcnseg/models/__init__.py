"""FCN models: backbones, the skip head, surgery and weight import."""
from .fcn import FCN, HeadSpec
from .preprocessing import Preprocessing
from .registry import MODELS, create_model, list_models

__all__ = ["FCN", "HeadSpec", "MODELS", "Preprocessing", "create_model", "list_models"]
