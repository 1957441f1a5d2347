"""FCN models: backbones, the skip head, surgery and weight import."""
from fcnseg.models.dense import DenseFCN, dense
from fcnseg.models.fcn import FCN, HeadSpec
from fcnseg.models.preprocessing import Preprocessing
from fcnseg.models.registry import MODELS, create_model, list_models

__all__ = ["FCN", "DenseFCN", "HeadSpec", "MODELS", "Preprocessing", "create_model", "dense", "list_models"]
