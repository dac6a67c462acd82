"""Side-by-side reports of finished runs: a metrics table and loss curves in one PNG.

A run directory is what `pgolf run` writes: summary.json (final metrics), metrics.jsonl (one JSON
object per logged step: step, train_loss, val_bpb, ...), config.json, train.log, artifact.pgolf.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from pgolf.atomic import atomic_path, read_json_object
from pgolf.errors import InputError

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
LOG_FILE = "train.log"


@dataclass
class Run:
    path: Path
    summary: dict
    metrics: list[dict] = field(default_factory=list)
    config: dict | None = None

    @property
    def label(self) -> str:
        where = f"{self.path.parent.name}/{self.path.name}"  # seed_1 vs toggle/seed_1 stay distinct
        return f"{self.summary.get('recipe', '?')}/seed{self.summary.get('seed', '?')} ({where})"


def _read_json(path: Path) -> dict:
    return read_json_object(path)


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl rows; a torn last line (run killed mid-write) is skipped, others must parse."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise InputError(f"{path}:{i + 1}: invalid JSON line") from None
        if isinstance(row, dict):
            rows.append(row)
    return rows


def load_run(path: str | os.PathLike) -> Run:
    p = Path(path)
    if not p.is_dir():
        raise InputError(f"{p}: not a run directory")
    if not (p / SUMMARY_FILE).is_file():
        raise InputError(f"{p}: {SUMMARY_FILE} not found (did the run finish?)")
    summary = _read_json(p / SUMMARY_FILE)
    for key in ("val_bpb",):
        if not isinstance(summary.get(key), (int, float)):
            raise InputError(f"{p / SUMMARY_FILE}: field '{key}' missing or not a number")
    config = _read_json(p / CONFIG_FILE) if (p / CONFIG_FILE).is_file() else None
    return Run(p, summary, read_metrics(p / METRICS_FILE), config)


def step_ms(summary: dict) -> float | None:
    steps, secs = summary.get("steps"), summary.get("train_seconds")
    if isinstance(steps, (int, float)) and isinstance(secs, (int, float)) and steps > 0:
        return 1000.0 * secs / steps
    return None


def table_rows(runs: list[Run]) -> list[dict]:
    rows = []
    for r in runs:
        s = r.summary
        pre = s.get("val_bpb_prequant")
        gap = s["val_bpb"] - pre if isinstance(pre, (int, float)) else None
        rows.append({"run": str(r.path), "recipe": s.get("recipe"), "seed": s.get("seed"),
                     "val_bpb": s["val_bpb"], "val_bpb_prequant": pre, "quant_gap": gap,
                     "artifact_bytes": s.get("artifact_bytes"), "steps": s.get("steps"),
                     "step_ms": step_ms(s), "train_seconds": s.get("train_seconds"),
                     "eval_seconds": s.get("eval_seconds")})
    return rows


_COLS = [("recipe", "recipe", "{}"), ("seed", "seed", "{}"), ("val_bpb", "val_bpb", "{:.5f}"),
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
    head = [c[1] for c in _COLS]
    body = [[_fmt(r.get(k), spec) for k, _, spec in _COLS] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    out += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = Path(png)
    fig, (ax_loss, ax_bpb) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, r in enumerate(runs):
        color = f"C{i % 10}"
        xs, ys = _series(r.metrics, "train_loss")
        if xs:
            ax_loss.plot(xs, ys, label=r.label, linewidth=1, color=color)
        xs, ys = _series(r.metrics, "val_bpb")
        if xs:
            ax_bpb.plot(xs, ys, marker="o", markersize=3, label=r.label, linewidth=1, color=color)
        steps = r.summary.get("steps")
        if isinstance(steps, (int, float)):
            ax_bpb.scatter([steps], [r.summary["val_bpb"]], marker="*", s=80, zorder=3, color=color)
    ax_loss.set(title="train loss", xlabel="step", ylabel="nats/token")
    ax_bpb.set(title="val bpb (star: final, post-quant)", xlabel="step", ylabel="bits/byte")
    for ax in (ax_loss, ax_bpb):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        with atomic_path(png, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return png


def compare_runs(paths: list[str], png: str | os.PathLike | None = None) -> dict:
    """Load runs, build the table (and the PNG when asked). Returns a JSON-able dict."""
    if not paths:
        raise InputError("compare: give at least one run directory")
    runs = [load_run(p) for p in paths]
    rows = table_rows(runs)
    out = {"runs": rows, "table": format_table(rows)}
    if png is not None:
        out["png"] = str(plot_runs(runs, png))
    return out
