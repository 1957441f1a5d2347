"""CUDA graphs read the tensors they were captured with: ``TorchEngine`` drops them when those are
replaced (new weights assigned, the trimmed net's constants refreshed). The bookkeeping runs on the CPU;
tests/test_cuda.py replays real graphs on a GPU."""
import torch

from fcnseg.infer.engines import TorchEngine


def _engine(tiny_fcn, trim: bool) -> TorchEngine:
    engine = TorchEngine(tiny_fcn(), "cpu", trim=trim)
    engine._graphs[("planted",)] = (None, None, None)   # what a capture would leave
    return engine


def test_graphs_stay_while_the_tensors_they_read_stay(tiny_fcn):
    engine = _engine(tiny_fcn, trim=True)
    with torch.no_grad():
        next(engine.model.parameters()).mul_(1.0)   # in place: the same storage, the graphs read it
    engine._drop_stale_graphs()
    assert engine._graphs


def test_new_weights_drop_the_graphs(tiny_fcn):
    engine = _engine(tiny_fcn, trim=False)
    conv = next(m for m in engine.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.weight = torch.nn.Parameter(conv.weight.detach().clone())   # a new tensor where the old was read
    engine._drop_stale_graphs()
    assert not engine._graphs


def test_refreshed_trimmed_constants_drop_the_graphs(tiny_fcn):
    engine = _engine(tiny_fcn, trim=True)
    engine.model.refresh()   # the background constants are new tensors
    engine._drop_stale_graphs()
    assert not engine._graphs
    engine._graphs[("planted",)] = (None, None, None)
    engine.refresh()          # the engine's own refresh: constants from the current weights, graphs dropped
    assert not engine._graphs and engine.model.version == 3
