"""Benchmarks: every inference engine side by side with the peer (torchfcn), one JSON report.

``run_bench(**options) -> dict`` measures; ``add_bench_arguments``/``main_bench`` are the CLI pieces;
:mod:`fcnseg.bench.peer` loads torchfcn's model classes with the same weights.
"""
from fcnseg.bench.cli import add_bench_arguments, main_bench
from fcnseg.bench.core import DEFAULT_ENGINES, BenchError, EngineSpec, parse_engine, run_bench
from fcnseg.bench.measure import count_flops, machine_info, sgemm_gflops
from fcnseg.bench.report import bench_markdown

__all__ = ["run_bench", "add_bench_arguments", "main_bench", "parse_engine", "EngineSpec", "DEFAULT_ENGINES",
           "BenchError", "count_flops", "sgemm_gflops", "machine_info", "bench_markdown"]
