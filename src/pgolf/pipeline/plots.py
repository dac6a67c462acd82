"""RUN/loss.png: train loss and validation bpb of a run, drawn after its artifact was scored.

The title names the recipe, seed and run; the x axis is training time when the budget is wall-clock
and steps otherwise; few points get markers; the scored post-quantization val_bpb is a star at the
end. Needs matplotlib (the `plots` extra); without it the plot is skipped with a log line.
"""
from __future__ import annotations

import math
from pathlib import Path

from pgolf.atomic import atomic_path
from pgolf.logs import log


def _points(rows: list[dict], key: str, x_key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        x, y = r.get(x_key), r.get(key)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(y):
            xs.append(x)
            ys.append(y)
    return xs, ys


def plot_run(path: Path, rows: list[dict], summary: dict, run_name: str, timed: bool) -> Path | None:
    """Draw loss.png from metrics rows and the final summary; None when matplotlib is missing."""
    try:
        import matplotlib  # optional: the `plots` extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        log.info("loss.png skipped: matplotlib is not installed (pip install 'pgolf[plots]')")
        return None
    x_key, x_label = ("elapsed_s", "training time (s)") if timed else ("step", "step")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    tr = _points(rows, "train_loss", x_key)
    va = _points(rows, "val_bpb", x_key)
    few = len(tr[0]) < 20
    if tr[0]:
        a1.plot(*tr, lw=1, marker="o" if few else None, markersize=4)
    a1.set(xlabel=x_label, ylabel="train loss (nats/token)", title="train loss")
    if va[0]:
        a2.plot(*va, marker="o", markersize=4, label="pre-quant (plain)")
    bpb = summary.get("val_bpb")
    if isinstance(bpb, (int, float)):
        x_end = summary.get("train_seconds") if timed else summary.get("steps")
        a2.scatter([x_end or 0], [bpb], marker="*", s=140, color="C3", zorder=3,
                   label=f"scored {bpb:.4f} ({summary.get('eval_method')}, post-quant)")
        a2.legend(fontsize=8)
    a2.set(xlabel=x_label, ylabel="val bits/byte", title="validation bpb")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        if not timed:
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{summary.get('recipe')} · seed {summary.get('seed')} · {run_name}", fontsize=10)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path
