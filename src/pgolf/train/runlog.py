"""Run-directory logging: env.json, train.log, metrics.jsonl, summary.json and loss.png.

Only rank 0 writes (a disabled RunLog is a no-op), so multi-process runs produce one set of files.
Every file except the append-only train.log / metrics.jsonl is written atomically.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgolf.atomic import atomic_path, read_json_object
from pgolf.model.io import atomic_write_text

ENV_FILE = "env.json"
LOG_FILE = "train.log"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "loss.png"

# summary.json keys every stage agrees on; pack/eval fill the ones the trainer leaves null.
SUMMARY_KEYS = ("recipe", "seed", "params", "steps", "train_tokens", "train_seconds", "tokens_per_second",
                "peak_memory_bytes", "val_loss", "val_bpb", "val_bpb_prequant", "model_bytes", "code_bytes",
                "artifact_bytes", "eval_method", "eval_seconds")


def git_commit(repo: Path | None = None) -> str | None:
    """HEAD of the git checkout holding pgolf's source, or None outside one."""
    repo = repo or Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated on GPU runs; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_info(device: torch.device, world_size: int) -> dict:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "device": str(device),
        "device_name": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "world_size": world_size,
        "git_commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["gpus_visible"] = torch.cuda.device_count()
    return info


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLog:
    """Writer for one run directory; `enabled=False` (ranks > 0) makes every method a no-op."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, echo: bool = True):
        self.dir = Path(run_dir)
        self.enabled = enabled
        self.echo = echo  # also print log lines on stderr
        self.bar = None
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    # -- files ---------------------------------------------------------------------------------
    def write_json(self, name: str, obj: dict) -> None:
        if self.enabled:
            atomic_write_text(self.dir / name, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def write_env(self, device: torch.device, world_size: int) -> dict:
        info = env_info(device, world_size) if self.enabled else {}
        self.write_json(ENV_FILE, info)
        return info

    def log(self, line: str) -> None:
        if not self.enabled:
            return
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        with open(self.dir / LOG_FILE, "a") as f:
            f.write(stamped + "\n")
        if self.echo:
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)

    def metrics(self, record: dict) -> None:
        if self.enabled:
            with open(self.dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")

    def truncate_metrics(self, last_step: int) -> None:
        """On resume: drop records logged after the checkpoint so steps are not duplicated."""
        if not self.enabled:
            return
        keep = [r for r in read_metrics(self.dir) if r.get("step", 0) <= last_step]
        atomic_write_text(self.dir / METRICS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))

    def write_summary(self, summary: dict) -> None:
        """Merge into summary.json (later stages add their keys to the same file)."""
        if not self.enabled:
            return
        path = self.dir / SUMMARY_FILE
        old = read_json_object(path, missing={})
        merged = {k: None for k in SUMMARY_KEYS}
        merged.update(old)
        merged.update(summary)
        self.write_json(SUMMARY_FILE, merged)

    # -- progress bar --------------------------------------------------------------------------
    def start_bar(self, total: int, initial: int, enabled: bool) -> None:
        if self.enabled and enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", file=sys.stderr, dynamic_ncols=True,
                            disable=None)  # None: no bar when stderr is not a terminal (logs stay readable)

    def bar_update(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # -- plot ----------------------------------------------------------------------------------
    def plot(self) -> Path | None:
        """loss.png: train loss and val bpb against step, from metrics.jsonl."""
        if not self.enabled:
            return None
        records = read_metrics(self.dir)
        if not records:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tr = [(r["step"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
        va = [(r["step"], r["val_bpb"]) for r in records if r.get("val_bpb") is not None]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        if tr:
            a1.plot(*zip(*tr), lw=1)
        a1.set(xlabel="step", ylabel="train loss (nats)", title="train loss")
        if va:
            a2.plot(*zip(*va), marker="o")
        a2.set(xlabel="step", ylabel="val bpb", title="validation bits per byte")
        for a in (a1, a2):
            a.grid(alpha=0.3)
        fig.tight_layout()
        path = self.dir / PLOT_FILE
        try:
            with atomic_path(path, suffix=".png") as tmp:
                fig.savefig(tmp, dpi=100)
        finally:
            plt.close(fig)
        return path
