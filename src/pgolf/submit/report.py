"""Side-by-side reports of finished runs: a metrics table with the config fields that differ, and the
loss curves of every run in one PNG. Runs come loaded (pgolf.pipeline.rundir.load_run)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from pgolf.atomic import atomic_path
from pgolf.errors import InputError


@dataclass
class Run:
    """A finished run as the reports need it."""

    path: Path
    summary: dict
    metrics: list[dict] = field(default_factory=list)
    config: dict | None = None
    log: Path | None = None  # the run's train.log
    env: dict | None = None
    audit: dict | None = None
    artifact_sha256: str | None = None  # of the artifact file on disk, when there is one

    @property
    def label(self) -> str:
        where = f"{self.path.parent.name}/{self.path.name}"  # seed_1 vs toggle/seed_1 stay distinct
        return f"{self.summary.get('recipe', '?')}/seed{self.summary.get('seed', '?')} ({where})"


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


LOCAL_FIELDS = ("data.path", "data.tokenizer")  # machine-local, never a difference worth showing


def config_differences(runs: list[Run]) -> list[str]:
    """Dotted config fields whose values are not the same in every run (local paths left out)."""
    flats = [flatten(r.config or {}) for r in runs]
    keys = sorted(set().union(*flats)) if flats else []
    return [k for k in keys if k not in LOCAL_FIELDS and len({repr(f.get(k)) for f in flats}) > 1]


def step_ms(summary: dict) -> float | None:
    steps, secs = summary.get("steps"), summary.get("train_seconds")
    if isinstance(steps, (int, float)) and isinstance(secs, (int, float)) and steps > 0:
        return 1000.0 * secs / steps
    return None


def table_rows(runs: list[Run], differing: list[str]) -> list[dict]:
    rows = []
    for r in runs:
        s, flat = r.summary, flatten(r.config or {})
        pre, post = s.get("val_bpb_prequant"), s.get("val_bpb")
        gap = post - pre if isinstance(pre, (int, float)) and isinstance(post, (int, float)) else None
        rows.append({"run": str(r.path), "label": r.label, "recipe": s.get("recipe"), "seed": s.get("seed"),
                     "val_bpb": post, "val_bpb_prequant": pre, "quant_gap": gap,
                     "artifact_bytes": s.get("artifact_bytes"), "steps": s.get("steps"),
                     "step_ms": step_ms(s), "train_seconds": s.get("train_seconds"),
                     "eval_seconds": s.get("eval_seconds"), "config": {k: flat.get(k) for k in differing}})
    return rows


_COLS = [("run", "run", "{}"), ("recipe", "recipe", "{}"), ("seed", "seed", "{}"), ("val_bpb", "val_bpb", "{:.5f}"),
         ("val_bpb_prequant", "prequant", "{:.5f}"), ("quant_gap", "gap", "{:+.5f}"),
         ("artifact_bytes", "artifact B", "{:,}"), ("steps", "steps", "{:,}"), ("step_ms", "ms/step", "{:.1f}"),
         ("train_seconds", "train s", "{:.1f}"), ("eval_seconds", "eval s", "{:.1f}")]


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    try:
        return spec.format(v)
    except (ValueError, TypeError):
        return str(v)


def format_table(rows: list[dict], markdown: bool = False) -> str:
    """The metrics table, then one column per config field that differs between the runs."""
    differing = list(rows[0]["config"]) if rows else []
    head = [c[1] for c in _COLS] + differing
    body = [[_fmt(r.get(k), spec) for k, _, spec in _COLS] + [_fmt(r["config"].get(k), "{}") for k in differing]
            for r in rows]
    for b, r in zip(body, rows):
        b[0] = Path(r["run"]).name
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    out += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    if not differing and len(rows) > 1:
        out.append("(the runs share one config apart from machine-local paths)")
    return "\n".join(out)


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        x, y = row.get("step"), row.get(key)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(y):
            xs.append(x)
            ys.append(y)
    return xs, ys


def plot_runs(runs: list[Run], png: str | os.PathLike) -> Path:
    """Train loss and val bpb against step for every run, two panels, one PNG (written atomically)."""
    import matplotlib  # optional at run time: a record never draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    png = Path(png)
    fig, (ax_loss, ax_bpb) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, r in enumerate(runs):
        color = f"C{i % 10}"
        xs, ys = _series(r.metrics, "train_loss")
        if xs:
            ax_loss.plot(xs, ys, label=r.label, linewidth=1, color=color, marker="o" if len(xs) < 20 else None,
                         markersize=3)
        xs, ys = _series(r.metrics, "val_bpb")
        if xs:
            ax_bpb.plot(xs, ys, marker="o", markersize=3, label=r.label, linewidth=1, color=color)
        steps = r.summary.get("steps")
        if isinstance(steps, (int, float)) and isinstance(r.summary.get("val_bpb"), (int, float)):
            ax_bpb.scatter([steps], [r.summary["val_bpb"]], marker="*", s=80, zorder=3, color=color)
    ax_loss.set(title="train loss", xlabel="step", ylabel="nats/token")
    ax_bpb.set(title="val bpb (star: final, post-quant)", xlabel="step", ylabel="bits/byte")
    for ax in (ax_loss, ax_bpb):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        with atomic_path(png, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return png


def compare_runs(runs: list[Run], png: str | os.PathLike | None = None) -> dict:
    """The table (and the PNG when asked) for loaded runs. Returns a JSON-able dict."""
    if not runs:
        raise InputError("compare: give at least one run directory")
    differing = config_differences(runs)
    rows = table_rows(runs, differing)
    out = {"runs": rows, "differing_fields": differing, "table": format_table(rows)}
    if png is not None:
        out["png"] = str(plot_runs(runs, png))
    return out
