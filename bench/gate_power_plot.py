"""Power of the promotion gate against the true gain: the fixed 500 x 4 test and the sequential gate, as the
planner computes them, with the simulated adoption rates of bench/promotion_calibration.py on top.

    .venv/bin/python bench/gate_power_plot.py [--out bench/gate_power.png]

The trained champion's per-example rates (bench/data/trained_champion_rates.json, accuracy 0.70 at temperature
1), n = 500, K = 4, alpha 0.05; one candidate and three (Bonferroni); common random numbers none (crn 1.0) and
as measured on the promotion demo's adopted pair (0.45 of the sampling variance left).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayrl.evaluation.gate import GateConfig  # noqa: E402
from rayrl.evaluation.planning import Inputs, plan, rate_variance  # noqa: E402

HERE = Path(__file__).resolve().parent
# simulated adoption rates (promotion_calibration.py, 10,000 repetitions, trained profile; RESULTS.md)
SIMULATED = {("sequential", 1, 1.0): {0.02: 0.7202, 0.05: 0.9988}, ("sequential", 1, 0.5): {0.02: 0.8978, 0.05: 1.0},
             ("sequential", 3, 1.0): {0.02: 0.6048}, ("sequential", 3, 0.5): {0.02: 0.8527}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "gate_power.png"))
    ap.add_argument("--crn", type=float, default=0.45, help="measured CRN factor to draw beside none")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = json.loads((HERE / "data" / "trained_champion_rates.json").read_text())["rates"]
    v = rate_variance(rates)
    gate = GateConfig()
    gains = np.linspace(0.0, 0.06, 31)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, m in zip(axes, (1, 3)):
        for design, style in (("fixed", "--"), ("sequential", "-")):
            for crn, colour in ((1.0, "tab:grey"), (args.crn, "tab:blue")):
                p = plan(gate, Inputs(500, 4, m, v, crn), design, tuple(gains))
                label = f"{design}, crn {crn:g}" + (f" (MDE {p.mde:.3f})" if p.mde else "")
                ax.plot(gains, [p.power[g] for g in gains], style, color=colour, label=label)
        for (design, mm, c), points in SIMULATED.items():
            if mm == m:
                ax.plot(list(points), list(points.values()), "o", color="tab:blue" if c < 1 else "tab:grey",
                        markersize=5)
        ax.axhline(0.8, color="k", lw=0.5)
        ax.axvline(0.02, color="k", lw=0.5, ls=":")
        ax.set_title(f"{m} candidate{'s' if m > 1 else ''} (alpha {gate.alpha:g}/{m})")
        ax.set_xlabel("true gain on the confirmation split")
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("P(adopted)")
    fig.suptitle(f"promotion gate power: trained champion (accuracy {np.mean(rates):.2f}), n = 500, K = 4; "
                 "dots: simulated (CRN c = 0 / 0.5)", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
