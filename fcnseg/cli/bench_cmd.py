"""``fcnseg bench``: see fcnseg.bench (latency, throughput, memory, FLOPs, side by side with torchfcn)."""
from fcnseg.bench import add_bench_arguments as add_arguments, main_bench as run  # noqa: F401
