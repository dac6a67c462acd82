"""The run directory: every file name under RUN, and the one writer of RUN/summary.json.

    config.json         the config as given (never changes after the run starts)
    resolved.json       what the run resolved: data dir, tokenizer (+ sha256), device, world size...
    env.json            versions, device, host, git commit
    train.log           every line the user saw, through the scored val_bpb
    metrics.jsonl       one JSON line per logged step (append-only)
    checkpoint/         resumable training state
    model.safetensors   final (averaged) pre-quantization weights
    hessians.safetensors  GPTQ calibration from training batches
    artifact.pgolf      quantized weights + config, pickle-free (what is scored and counted)
    summary.json        the keys below, merged by stage
    audit.json          the legality audits of the eval methods
    loss.png            the curves, with the scored post-quant val_bpb
    data/               shards prepared for the run (with a manifest), when --data was a corpus
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from pgolf.atomic import atomic_write_json, atomic_write_text, read_json_object, read_jsonl
from pgolf.config import Config
from pgolf.data.tokenizer import file_sha256
from pgolf.errors import ConfigError, InputError
from pgolf.submit.report import Run

CONFIG, RESOLVED, ENV, LOG, METRICS = "config.json", "resolved.json", "env.json", "train.log", "metrics.jsonl"
CHECKPOINT, WEIGHTS, HESSIANS, ARTIFACT = "checkpoint", "model.safetensors", "hessians.safetensors", "artifact.pgolf"
SUMMARY, AUDIT, PLOT, DATA = "summary.json", "audit.json", "loss.png", "data"

# summary.json keys every run has (null until the stage that fills them has run)
SUMMARY_KEYS = ("recipe", "seed", "params", "steps", "train_tokens", "train_seconds", "tokens_per_second",
                "peak_memory_bytes", "val_loss", "val_bpb", "val_bpb_prequant", "model_bytes", "code_bytes",
                "artifact_bytes", "eval_method", "eval_seconds")
# what a successful repack makes stale: the scores belonged to the previous artifact
EVAL_KEYS = ("val_loss", "val_bpb", "eval_method", "eval_seconds", "eval_tokens", "eval_bytes", "eval_subset",
             "eval_source", "val_bpb_postquant_plain", "quant_gap", "audit_passed", "eval_artifact_sha256",
             "eval_full_split", "script_scoring")


def git_commit() -> str | None:
    """HEAD of the git checkout holding pgolf's source, or None outside one."""
    repo = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_info(device: torch.device, world_size: int) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "hostname": socket.gethostname(), "device": str(device),
            "device_name": cpu_name(), "cpu_count": os.cpu_count(), "cpu_threads": torch.get_num_threads(),
            "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "world_size": world_size,
            "git_commit": git_commit(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["gpus_visible"] = torch.cuda.device_count()
    return info


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"RUN/{name}")


class RunDir:
    config, resolved, env, log, metrics = _file(CONFIG), _file(RESOLVED), _file(ENV), _file(LOG), _file(METRICS)
    checkpoint, weights, hessians = _file(CHECKPOINT), _file(WEIGHTS), _file(HESSIANS)
    artifact, summary_file, audit_file, plot, data = _file(ARTIFACT), _file(SUMMARY), _file(AUDIT), _file(PLOT), _file(DATA)

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- starting a run --------------------------------------------------------------------------
    def prepare(self, resume: bool, move_aside: bool = False, has_checkpoint: bool = False) -> Path | None:
        """A fresh run needs an empty (or absent) directory; --resume needs a checkpoint. With
        move_aside, an old directory is renamed to RUN.old-<time> first (returned)."""
        if resume:
            if not has_checkpoint:
                raise InputError(f"{self.path}: no checkpoint to resume from (expected {self.checkpoint})")
            return None
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"--out {self.path}: exists and is not a directory")
        if self.path.is_dir() and any(self.path.iterdir()):
            if has_checkpoint and not move_aside:
                raise InputError(f"{self.path}: already holds a checkpoint; pass --resume to continue it, "
                                 "--move-aside to start over, or choose a new --out")
            if not move_aside:
                raise InputError(f"{self.path}: not empty (outputs of an earlier run?); choose a new --out, or "
                                 "pass --move-aside to move the old contents to a sibling directory")
            old = self.path.with_name(f"{self.path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(self.path, old)
            self.path.mkdir(parents=True)
            return old
        self.path.mkdir(parents=True, exist_ok=True)
        return None

    # -- files -----------------------------------------------------------------------------------
    def write_config(self, cfg: Config) -> None:
        atomic_write_text(self.config, cfg.to_json() + "\n")

    def read_config(self) -> Config:
        d = read_json_object(self.config)
        if d is None:
            raise InputError(f"{self.config}: not found (is {self.path} a pgolf run directory?)")
        try:
            return Config.from_dict(d)
        except ConfigError as e:
            raise InputError(f"{self.config}: {e}") from None

    def write_resolved(self, values: dict) -> None:
        atomic_write_json(self.resolved, values)

    def read_resolved(self) -> dict:
        return read_json_object(self.resolved, missing={}) or {}

    def write_env(self, device: torch.device, world: int) -> None:
        atomic_write_json(self.env, env_info(device, world))

    def summary(self) -> dict:
        return read_json_object(self.summary_file, missing={}) or {}

    def update_summary(self, values: dict) -> dict:
        """Merge into summary.json (atomic); the only writer of that file."""
        merged = {k: None for k in SUMMARY_KEYS}
        merged.update(self.summary())
        merged.update(values)
        atomic_write_json(self.summary_file, merged)
        return merged

    def metrics_rows(self) -> list[dict]:
        return read_jsonl(self.metrics)

    def truncate_metrics(self, last_step: int) -> None:
        """On resume: drop records logged after the checkpoint so no step appears twice."""
        keep = [r for r in self.metrics_rows() if r.get("step", 0) <= last_step]
        atomic_write_text(self.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))

    def record_audit(self, report: dict) -> dict:
        """Merge one method's audit into audit.json: {"passed": every method passed, "methods": {...}}."""
        data = read_json_object(self.audit_file, missing={}) or {}
        data.setdefault("methods", {})[report["method"]] = report
        data["passed"] = all(r.get("passed") for r in data["methods"].values())
        atomic_write_json(self.audit_file, data)
        return data

    def artifact_sha256(self) -> str | None:
        return file_sha256(self.artifact) if self.artifact.is_file() else None


def is_run_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG).is_file()


def run_dir_of(path: str | os.PathLike) -> RunDir | None:
    """The run directory holding `path`: itself, or an artifact's folder when that is a run."""
    p = Path(path)
    if is_run_dir(p):
        return RunDir(p)
    if p.is_file() and is_run_dir(p.parent):
        return RunDir(p.parent)
    return None


def load_run(path: str | os.PathLike) -> Run:
    """A finished run for the reports and the record folder (it needs a summary.json)."""
    rd = RunDir(path)
    if not rd.path.is_dir():
        raise InputError(f"{rd.path}: not a run directory")
    if not rd.summary_file.is_file():
        raise InputError(f"{rd.path}: {SUMMARY} not found (did the run finish?)")
    summary = rd.summary()
    return Run(rd.path, summary, rd.metrics_rows(), read_json_object(rd.config), rd.log if rd.log.is_file() else None,
               read_json_object(rd.env), read_json_object(rd.audit_file), rd.artifact_sha256())
