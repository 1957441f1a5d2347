"""Fault corpus: every bad input gives one clear line (or a warning where --skip-bad asked), never a traceback.

Each case of :mod:`fault_corpus` runs ``fcnseg.cli.main.main(argv)`` in-process with stderr captured.
"""
from __future__ import annotations

import os
from collections import Counter

import pytest
import torch
from support.fault_corpus import CASES_MIN, Case, Ctx, Shared, all_cases, own_cases

from fcnseg.cli.main import main

CASES = all_cases()
MAX_LINE = 1500  # a clear error is one line of readable length
_tried: Counter = Counter()


class _Summary:
    """Adds ``fault corpus: N cases tried`` to pytest's terminal summary."""

    def pytest_terminal_summary(self, terminalreporter):
        if _tried:
            cats = ", ".join(f"{c} {n}" for c, n in sorted(_tried.items()))
            terminalreporter.write_line(f"fault corpus: {sum(_tried.values())} of {len(CASES)} cases tried ({cats})")


@pytest.fixture(scope="module")
def shared(tmp_path_factory, request):
    if not request.config.pluginmanager.has_plugin("fcnseg-fault-summary"):
        request.config.pluginmanager.register(_Summary(), "fcnseg-fault-summary")
    return Shared(tmp_path_factory.mktemp("fault-shared"))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: the tiny nets gain nothing from more, and busy shared cores hurt OpenMP."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _params():
    for c in CASES:
        marks = [pytest.mark.xfail(reason=c.xfail, strict=False)] if c.xfail else []
        yield pytest.param(c, id=c.name, marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_fault(case: Case, shared, tmp_path, capsys, monkeypatch):
    if case.skip_if_root and os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not block reads (dir-as-file, FIFO and /dev/null cases cover "
                    "unreadable paths)")
    monkeypatch.chdir(tmp_path)
    plan = case.setup(Ctx(tmp_path, shared))
    for k, v in plan.env.items():
        monkeypatch.setenv(k, v)
    for p in plan.syspath:
        monkeypatch.syspath_prepend(p)
    _tried[case.category.split("/")[0]] += 1
    try:
        code = main(plan.argv)
    except SystemExit as e:  # argparse: must not escape main()
        code = f"SystemExit({e.code})"
    out, err = capsys.readouterr()
    report = f"argv={plan.argv}\nexit={code}\nstderr:\n{err[-3000:]}\nstdout:\n{out[-1000:]}"
    assert "Traceback" not in err and "Traceback" not in out, report
    errors = [ln for ln in err.splitlines() if ln.startswith("fcnseg: error:")]
    warned = [ln for ln in err.splitlines() if ln.startswith("fcnseg: warning:")]
    if case.expect == "error":
        assert [*case.cause, *plan.cause], f"error case {case.name} gives no cause words (Plan.cause)"
        assert code == 2, report  # 2: a reported bad input; 1 is the catch-all for unexpected failures
        assert len(errors) == 1, report
        assert len(errors[0]) <= MAX_LINE, f"error line of {len(errors[0])} characters\n{report[:3000]}"
        for name in plan.names:
            assert name in errors[0], f"{name!r} not named\n{report}"
        for word in [*case.cause, *plan.cause]:
            assert word in errors[0], f"cause {word!r} not given\n{report}"
    else:
        assert code == 0 and not errors, report
        if case.expect == "skipped":
            for name in plan.names:
                assert any(name in w for w in warned), f"no warning names {name!r}\n{report}"
    if plan.check is not None:
        plan.check()


def test_corpus_size_and_coverage():
    """The corpus is generated: enough cases, in every command, for every outcome."""
    assert len(CASES) >= CASES_MIN
    commands = Counter(c.command for c in CASES)
    assert {"predict", "eval", "train", "untrusted"} <= set(commands), commands
    assert {"error", "ok", "skipped"} == {c.expect for c in CASES}
    print(f"fault corpus: {len(CASES)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(commands.items())))


def test_every_error_case_of_the_corpus_gives_its_cause():
    """An error case asserts why it failed, not just which file: fault_corpus.CAUSES covers each of its own
    (the area modules' cases give Plan.cause, checked when they run)."""
    missing = [c.name for c in own_cases() if c.expect == "error" and not c.cause]
    assert not missing, f"no cause words in fault_corpus.CAUSES for {missing}"
    assert all(w.strip() for c in own_cases() for w in c.cause)
