"""``fcnseg export``: see fcnseg.infer.export (ONNX with dynamic H×W, torch.export, int8)."""
from fcnseg.infer.export import add_export_arguments as add_arguments, main_export as run  # noqa: F401
