"""fcnseg: Fully Convolutional Networks for Semantic Segmentation, in PyTorch."""
from fcnseg._version import __version__
from fcnseg.models import FCN, create_model, list_models

__all__ = ["FCN", "create_model", "list_models", "__version__"]
