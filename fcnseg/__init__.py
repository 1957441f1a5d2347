"""fcnseg: Fully Convolutional Networks for Semantic Segmentation, in PyTorch."""
from fcnseg.models import FCN, create_model, list_models

__version__ = "0.1.0"
__all__ = ["FCN", "create_model", "list_models", "__version__"]
