"""FLOPs of dense output (shift-and-stitch, rarefaction) of VGG16 FCN-32s and FCN-8s, relative to the coarse
FCN-32s, at 500×500.

Prints the README's markdown table (counted on the meta device by ``torch.utils.flop_counter``, no weights
needed): ``.venv/bin/python -m scripts.dense_flops``."""
import torch
from torch.utils.flop_counter import FlopCounterMode

import fcnseg
from fcnseg.config import ALIGNMENTS
from fcnseg.models.dense import dense


def gflops(net, x) -> float:
    with FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops() / 1e9


def main() -> None:
    rows = {}
    for alignment in ALIGNMENTS:
        with torch.device("meta"):
            base = fcnseg.create_model("fcn32s", 21, alignment=alignment).eval()
            x = torch.empty(1, 3, 500, 500)
            coarse = gflops(base, x)
            rows.setdefault("FCN-32s (coarse)", []).append(f"{coarse:.1f} G (1.00)")
            for method in ("rarefaction", "shift-and-stitch"):
                ratios = [gflops(dense(base, f, method=method), x) / coarse for f in (2, 4, 8)]
                rows.setdefault(f"{method} f = 2 / 4 / 8", []).append(" / ".join(f"{r:.3g}" for r in ratios))
            skips = [gflops(fcnseg.create_model(n, 21, alignment=alignment).eval(), x) / coarse
                     for n in ("fcn16s", "fcn8s")]
            rows.setdefault("FCN-16s / FCN-8s (skips)", []).append(" / ".join(f"{r:.2f}" for r in skips))
            fcn8s = fcnseg.create_model("fcn8s", 21, alignment=alignment).eval()
            for method in ("rarefaction", "shift-and-stitch"):
                ratios = [gflops(dense(fcn8s, f, method=method), x) / coarse for f in (2, 4, 8)]
                rows.setdefault(f"FCN-8s {method} f = 2 / 4 / 8", []).append(" / ".join(f"{r:.3g}" for r in ratios))
    print("| | caffe alignment | same alignment |\n|---|---|---|")
    for name, cells in rows.items():
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
