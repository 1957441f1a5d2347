"""Fault-corpus cases of one area (predict); collected by :func:`fault_corpus.all_cases`."""
from __future__ import annotations

from collections.abc import Iterator

from support.fault_corpus import Case, Ctx, Plan, png_bytes


def _cache(ctx: Ctx) -> dict[str, str]:
    """The engine cache in the case's own folder, never the user's home."""
    return {"FCNSEG_CACHE": str(ctx.tmp / "cache")}


def _argv(ctx: Ctx, *inputs: str, out: str | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    return ["predict", *inputs, "--checkpoint", str(ctx.shared.checkpoint()), "--out", out or ctx.out(), *extra]


def _escaped(path) -> str:
    return str(path).replace("\n", "\\n")


def cases() -> Iterator[Case]:
    def mixed_sizes(ctx: Ctx) -> Plan:  # row 1: the default engine re-exports per size
        for i, size in enumerate([(16, 20), (24, 18), (16, 20)]):
            ctx.good_image(ctx.p("in", f"img{i}.png"), size, seed=i)
        out = ctx.tmp / "out"

        def check() -> None:
            assert sorted(p.name for p in out.glob("*_label.png")) == [f"img{i}_label.png" for i in range(3)]

        return Plan(_argv(ctx, str(ctx.tmp / "in"), extra=("--overlay", "none")), env=_cache(ctx), check=check)

    def cache_is_a_file(ctx: Ctx) -> Plan:  # row 3: an unwritable engine cache falls back, never fails
        ctx.p("cache").write_text("a file where the cache folder should be")
        good = ctx.good_image(ctx.p("in", "good.png"))
        return Plan(_argv(ctx, str(good), extra=("--overlay", "none")), env={"FCNSEG_CACHE": str(ctx.tmp / "cache")},
                    check=lambda: (ctx.tmp / "out" / "good_label.png").is_file() or _fail("no label written"))

    def newline_name(ctx: Ctx) -> Plan:  # row 20
        bad = ctx.p("in", "bad\nname.png")
        bad.write_text("not a png")
        return Plan(_argv(ctx, str(bad)), [_escaped(bad)], cause=["not an image file"], env=_cache(ctx))

    def newline_name_skipped(ctx: Ctx) -> Plan:
        bad = ctx.p("in", "bad\nname.png")
        bad.write_text("not a png")
        ctx.good_image(ctx.p("in", "good.png"))
        return Plan(_argv(ctx, str(bad.parent), extra=("--skip-bad", "--engine", "torch")), [_escaped(bad)],
                    env=_cache(ctx))

    def wide_strip(ctx: Ctx) -> Plan:  # row 21: 0.1 MP on disk, ~20 MP computed with the pad-100 border
        strip = ctx.p("in", "strip.png")
        strip.write_bytes(png_bytes(100000, 1, 8, 2))
        return Plan(_argv(ctx, str(strip)), [str(strip)], cause=["max_pixels", "100 px padding", "tile"],
                    env=_cache(ctx))

    def out_under_a_file(ctx: Ctx) -> Plan:  # row 9
        good = ctx.good_image(ctx.p("in", "good.png"))
        ctx.p("file").write_text("x")
        out = ctx.tmp / "file" / "out"
        return Plan(_argv(ctx, str(good), out=str(out)), [str(out)], cause=["cannot write", "not a directory"],
                    env=_cache(ctx))

    def eval_out_under_a_file(ctx: Ctx) -> Plan:
        root = ctx.camvid(n_train=0, n_val=1)
        ctx.p("file").write_text("x")
        out = ctx.tmp / "file" / "out"
        argv = ["eval", "--checkpoint", str(ctx.shared.checkpoint()), "--dataset", "camvid", "--root", str(root),
                "--split", "val", "--no-progress", "--out", str(out)]
        return Plan(argv, [str(out)], cause=["cannot write", "not a directory"])

    yield Case("predict-mixed-sizes-default-engine", "predict/engine", "ok", mixed_sizes)
    yield Case("predict-engine-cache-is-a-file", "predict/engine", "ok", cache_is_a_file)
    yield Case("predict-newline-in-name", "predict/path", "error", newline_name)
    yield Case("predict-newline-in-name-skipped", "predict/path", "skipped", newline_name_skipped)
    yield Case("predict-1x100000-padded-compute", "predict/huge", "error", wide_strip)
    yield Case("predict-out-under-a-file", "predict/write", "error", out_under_a_file)
    yield Case("predict-eval-out-under-a-file", "eval/write", "error", eval_out_under_a_file)


def _fail(message: str) -> None:
    raise AssertionError(message)
