"""``fcnseg export``: see fcnseg.export (ONNX with dynamic H×W, torch.export, int8)."""
from ..export import add_export_arguments as add_arguments, main_export as run  # noqa: F401
