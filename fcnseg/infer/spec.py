"""Engine names: the one type that parses, names and builds inference engines.

A name reads ``<runtime>[-<dtype>][-dynamic][-cl][-trim][-lowmem][-compile][-graphs][@<alignment>]``:
``torch-bf16-cl-trim``, ``ort-int8-dynamic``, ``ort-fp32-trim-lowmem``, ``torch-fp32@same``. Runtimes:
``torch`` (PyTorch eager), ``ort`` (ONNX Runtime), and for benchmarks ``peer`` (torchfcn's FCN8s) and
``tvfcn`` (torchvision's FCN-ResNet50, a GPU speed reference: another net, never compared for scores).
:attr:`EngineSpec.name` writes the flags in the order above, so ``EngineSpec.parse(n).name == n`` for
every name written that way. Engines take their ``name`` from their spec;
:func:`fcnseg.infer.engines.build_engine` builds the engine a spec names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from fcnseg.config import ALIGNMENTS
from fcnseg.errors import ConfigError

__all__ = ["EngineSpec", "RUNTIMES", "PRECISIONS"]

RUNTIMES = ("peer", "torch", "ort", "tvfcn")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
_FLAGS = {"dynamic": "dynamic_quant", "cl": "channels_last", "trim": "trim", "lowmem": "low_memory",
          "compile": "compile", "graphs": "cuda_graphs"}  # name flag -> field, in name order
_NAME = re.compile(rf"^(?P<rt>{'|'.join(RUNTIMES)})(-(?P<dt>{'|'.join(PRECISIONS)}))?"
                   rf"(?P<flags>(-({'|'.join(_FLAGS)}))*)(@(?P<al>{'|'.join(ALIGNMENTS)}))?$")
_EXAMPLES = "peer, torch-fp32, torch-fp32-cl, torch-bf16-trim, ort-fp32, ort-int8-trim, ort-int8-dynamic, ort-fp32@same"


@dataclass(frozen=True)
class EngineSpec:
    """One engine: runtime, precision, options and the model alignment it runs."""

    runtime: str
    dtype: str = "fp32"
    dynamic_quant: bool = False     # int8 with activations quantised at run time (no calibration)
    channels_last: bool = False
    trim: bool = False              # skip the image-independent pad-100 border (fcnseg.models.trimmed)
    low_memory: bool = False        # ONNX Runtime without its memory arena
    compile: bool = False           # torch.compile
    cuda_graphs: bool = False
    alignment: str = "caffe"

    @property
    def name(self) -> str:
        flags = "".join(f"-{flag}" for flag, attr in _FLAGS.items() if getattr(self, attr))
        dtype = "" if self.runtime == "peer" else f"-{self.dtype}"
        return f"{self.runtime}{dtype}{flags}" + ("" if self.alignment == "caffe" else f"@{self.alignment}")

    @property
    def exact(self) -> bool:
        """Same function as our fp32 PyTorch model (up to fp32 rounding)."""
        return self.dtype == "fp32" and self.runtime != "tvfcn"

    def with_alignment(self, alignment: str) -> EngineSpec:
        return replace(self, alignment=alignment)

    @classmethod
    def parse(cls, name: str, argument: str = "--engines") -> EngineSpec:
        """``"ort-int8-trim"`` → ``EngineSpec("ort", "int8", trim=True)``; a bad name → one-line ConfigError
        naming ``argument``."""
        m = _NAME.match(name.strip())
        if not m:
            raise ConfigError(f"{argument}: cannot parse engine {name!r}; expected e.g. {_EXAMPLES}")
        flags = set(filter(None, m["flags"].split("-")))
        spec = cls(m["rt"], m["dt"] or "fp32", alignment=m["al"] or "caffe",
                   **{attr: flag in flags for flag, attr in _FLAGS.items()})
        problem = spec._problem(flags, explicit_alignment=m["al"] is not None)
        if problem:
            raise ConfigError(f"{argument}: {problem}: {name!r}")
        return spec

    def _problem(self, flags: set[str], explicit_alignment: bool) -> str | None:
        if self.runtime == "peer" and (self.dtype != "fp32" or flags or self.alignment != "caffe"):
            return "the peer runs as published (fp32, caffe alignment)"
        if self.runtime == "tvfcn" and (self.trim or self.low_memory or self.dynamic_quant or self.dtype == "int8"
                                        or explicit_alignment):
            return "tvfcn (torchvision FCN-ResNet50) takes -fp32/-bf16/-fp16, -cl, -compile, -graphs"
        if self.runtime == "ort" and (self.dtype in ("bf16", "fp16") or flags - {"trim", "lowmem", "dynamic"}):
            return "ONNX Runtime engines are ort-fp32 / ort-int8 [-dynamic] [-trim] [-lowmem]"
        if self.dynamic_quant and self.dtype != "int8":
            return "-dynamic is a kind of int8 quantisation (ort-int8-dynamic)"
        if self.low_memory and self.runtime != "ort":
            return "-lowmem is an ONNX Runtime option"
        if self.runtime == "torch" and self.dtype == "int8":
            return "int8 is offered through ONNX Runtime (ort-int8)"
        if self.trim and self.alignment != "caffe":
            return "-trim only applies to caffe alignment"
        return None
