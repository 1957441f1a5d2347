"""Benchmarks: every inference engine side by side with the peer (torchfcn), one JSON report.

``run_bench(**options) -> dict`` measures (the command is :mod:`fcnseg.cli.bench_cmd`);
:mod:`fcnseg.bench.peer` loads torchfcn's model classes with the same weights; engine names are
:class:`fcnseg.infer.spec.EngineSpec`.
"""
from fcnseg.bench.core import DEFAULT_ENGINES, BenchError, run_bench
from fcnseg.bench.measure import count_flops, machine_info, sgemm_gflops
from fcnseg.bench.report import bench_markdown

__all__ = ["run_bench", "DEFAULT_ENGINES", "BenchError", "count_flops", "sgemm_gflops", "machine_info",
           "bench_markdown"]
