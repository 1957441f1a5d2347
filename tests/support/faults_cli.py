"""Fault-corpus cases of one area (cli: export, bench, reproduce, the one-line printer); collected by
:func:`fault_corpus.all_cases`."""
from __future__ import annotations

import json
from collections.abc import Iterator

from support.fault_corpus import Case, Ctx, Plan

# a bench that measures next to nothing: one tiny torch engine, no peer, no sgemm, no training step
TINY_BENCH = ["--size", "32", "32", "--width", "0.0625", "--fc-channels", "16", "--num-classes", "3", "--engines",
              "torch-fp32", "--no-peer", "--no-train-step", "--sgemm-n", "0", "--repeats", "1", "--warmup", "0",
              "--throughput-batch", "0", "--quiet"]


def cases() -> Iterator[Case]:
    yield from _export_cases()
    yield from _bench_cases()
    yield from _reproduce_cases()
    yield from _printer_cases()


def _option(name: str, command: str, argv: list[str], option: str, cause: list[str]) -> Case:
    def setup(ctx: Ctx) -> Plan:
        return Plan([command, *argv], [option], cause=cause)
    return Case(name, f"{command}/options", "error", setup)


def _export_cases() -> Iterator[Case]:
    out = ["--output", "x.onnx"]
    yield _option("export-opset-999", "export", [*out, "--opset", "999"], "--opset", ["opset must be in"])
    yield _option("export-opset-9-cannot-pool", "export", [*out, "--opset", "9"], "--opset", ["opset must be in"])
    yield _option("export-opset-not-a-number", "export", [*out, "--opset", "17.5"], "--opset", ["whole number"])
    yield _option("export-size-negative", "export", [*out, "--size", "-5", "10"], "--size", [">= 1"])
    yield _option("export-num-classes-negative", "export", [*out, "--num-classes", "-3"], "--num-classes", [">= 1"])
    yield _option("export-num-classes-zero", "export", [*out, "--num-classes", "0"], "--num-classes", [">= 1"])
    yield _option("export-model-unknown", "export", [*out, "--model", "fcn99s"], "--model", ["invalid choice"])
    yield _option("export-backbone-unknown", "export", [*out, "--backbone", "vgg99"], "--backbone",
                  ["invalid choice"])
    yield _option("export-calibration-count-negative", "export", [*out, "--calibration-count", "-11"],
                  "--calibration-count", [">= 1"])
    yield _option("export-output-not-onnx-or-pt2", "export", ["--output", "x.txt"], "--output", [".onnx", ".pt2"])
    yield _option("export-int8-static-without-calibration", "export", [*out, "--int8", "static"], "--calibration",
                  ["needs"])

    def not_offered(ctx: Ctx) -> Plan:
        return Plan(["export", "--output", "x.onnx", "--model", "fcn8s", "--backbone", "alexnet"],
                    ["--model", "alexnet"], cause=["not offered"])

    def output_parent_is_file(suffix: str):
        def setup(ctx: Ctx) -> Plan:
            blocker = ctx.p("blocker")
            blocker.write_text("a file where the output folder should be\n")
            target = blocker / f"net{suffix}"
            return Plan(["export", "--checkpoint", str(ctx.shared.checkpoint(3)), "--output", str(target),
                         "--no-verify"], [str(target)], cause=["cannot write"])
        return setup

    def output_is_folder(ctx: Ctx) -> Plan:
        target = ctx.p("net.onnx")
        target.mkdir()
        return Plan(["export", "--output", str(target)], [str(target)], cause=["folder"])

    def checkpoint_not_torch(ctx: Ctx) -> Plan:
        ck = ctx.p("notes.pt")
        ck.write_text("hello\n")
        return Plan(["export", "--checkpoint", str(ck), "--output", "x.onnx"], [str(ck)],
                    cause=["not a torch.save file"])

    yield Case("export-model-not-offered-on-backbone", "export/options", "error", not_offered)
    yield Case("export-onnx-parent-is-a-file", "export/write", "error", output_parent_is_file(".onnx"))
    yield Case("export-pt2-parent-is-a-file", "export/write", "error", output_parent_is_file(".pt2"))
    yield Case("export-output-is-a-folder", "export/write", "error", output_is_folder)
    yield Case("export-checkpoint-is-text", "export/checkpoint", "error", checkpoint_not_torch)


def _bench_cases() -> Iterator[Case]:
    for option, value, cause in (("--repeats", "0", ">= 1"), ("--threads", "0", ">= 1"), ("--batch", "0", ">= 1"),
                                 ("--width", "-1", "> 0"), ("--width", "nan", "> 0"), ("--warmup", "-1", ">= 0"),
                                 ("--throughput-batch", "-2", ">= 0"), ("--throughput-repeats", "0", ">= 1"),
                                 ("--fc-channels", "0", ">= 1"), ("--sgemm-n", "-1", ">= 0"),
                                 ("--num-classes", "0", ">= 1"), ("--model", "fcn99s", "invalid choice")):
        yield _option(f"bench-{option[2:]}-{value}", "bench", [option, value], option, [cause])
    yield _option("bench-size-0-0", "bench", ["--size", "0", "0"], "--size", [">= 1"])

    def out_parent_is_file(ctx: Ctx) -> Plan:
        blocker = ctx.p("blocker")
        blocker.write_text("a file where the report folder should be\n")
        target = blocker / "bench.json"
        return Plan(["bench", *TINY_BENCH, "--out", str(target)], [str(target)], cause=["cannot write"])

    def out_is_folder(ctx: Ctx) -> Plan:
        target = ctx.p("bench.json")
        target.mkdir()
        return Plan(["bench", *TINY_BENCH, "--out", str(target)], [str(target)], cause=["folder"])

    yield Case("bench-out-parent-is-a-file", "bench/write", "error", out_parent_is_file)
    yield Case("bench-out-is-a-folder", "bench/write", "error", out_is_folder)


def _reproduce_cases() -> Iterator[Case]:
    def only_unknown(ctx: Ctx) -> Plan:
        return Plan(["reproduce", "camvid", "--out", ctx.out(), "--only", "nosuchrun"], ["nosuchrun", "--only"],
                    cause=["is not in protocol cpu", "runs: fcn32s"])

    def bad_record(content: str, cause: str, report_only: bool = False):
        def setup(ctx: Ctx) -> Plan:
            rec = ctx.p("out", "fcn32s.json")
            rec.write_text(content)
            extra = ["--report-only"] if report_only else ["--only", "fcn32s"]
            return Plan(["reproduce", "camvid", "--out", ctx.out(), *extra], [str(rec)],
                        cause=["not a finished run record", cause])
        return setup

    def needs_earlier(ctx: Ctx) -> Plan:
        return Plan(["reproduce", "camvid", "--out", ctx.out(), "--only", "fcn16s-staged"], ["fcn16s-staged", "fcn32s"],
                    cause=["needs run fcn32s first"])

    partial = json.dumps({"run": "fcn32s", "metrics": {"mean_iu": 0.5}})
    yield Case("reproduce-only-unknown-run", "reproduce/options", "error", only_unknown)
    yield Case("reproduce-empty-run-json", "reproduce/record", "error", bad_record("", "empty"))
    yield Case("reproduce-truncated-run-json", "reproduce/record", "error", bad_record('{"run": "fcn3', "not JSON"))
    yield Case("reproduce-partial-run-json", "reproduce/record", "error", bad_record(partial, "missing"))
    yield Case("reproduce-report-only-empty-run-json", "reproduce/record", "error",
               bad_record("", "empty", report_only=True))
    yield Case("reproduce-run-json-a-list", "reproduce/record", "error",
               bad_record("[1, 2]", "missing", report_only=True))
    yield Case("reproduce-staged-run-without-its-source", "reproduce/options", "error", needs_earlier)


def _printer_cases() -> Iterator[Case]:
    def newline_in_name(ctx: Ctx) -> Plan:
        ck = ctx.tmp / "bad\nname.pt"
        ck.write_bytes(b"")
        escaped = str(ck).replace("\n", "\\n")
        return Plan(["export", "--checkpoint", str(ck), "--output", "x.onnx"], [escaped], cause=["truncated"])

    def control_in_name(ctx: Ctx) -> Plan:
        ck = ctx.tmp / "bell\x07\ttab.pt"
        return Plan(["eval", "--checkpoint", str(ck)], [str(ck).replace("\x07", "\\x07").replace("\t", "\\t")],
                    cause=["not found"])

    yield Case("cli-newline-in-file-name", "cli/printer", "error", newline_in_name)
    yield Case("cli-control-characters-in-file-name", "cli/printer", "error", control_in_name)
