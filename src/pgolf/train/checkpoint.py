"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

Layout of a checkpoint directory CKPT (staged in CKPT.tmp/ and renamed into place, with state.json
written last, so a crash never leaves a half-written checkpoint; the previous one survives as CKPT.old
until the swap is done):
  state.json            step, elapsed time, flags, JSON parts of optimizer/loader states (rank 0)
  model.safetensors     model weights
  optim.safetensors     optimizer state tensors, flattened to "opt{i}.state.{param}.{key}"
  averager.safetensors  EMA/SWA state (when on)
  rank{r}.json / rank{r}.safetensors   per-rank loader position and RNG states

Nested states (optimizer/loader state_dicts) are split by `flatten_state` into a JSON tree whose
tensors are replaced by references into a flat {name: tensor} dict, and rebuilt by `unflatten_state`.
With several ranks the run directory must be on a filesystem every rank can see.
"""
from __future__ import annotations

import json
import random
import shutil
import signal
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgolf.errors import InputError, WorkError
from pgolf.atomic import atomic_write_text
from pgolf.logs import log
from pgolf.model.weights import check_state, load_tensors, save_tensors
from pgolf.runtime import barrier

STATE_FILE = "state.json"
FORMAT = "pgolf-checkpoint-1"


# ---------------------------------------------------------------------------------------------
# nested state <-> (JSON tree, flat tensors)

def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of `obj` with tensors/arrays moved into `tensors` under names from `prefix`."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        if prefix in tensors:
            raise TypeError(f"checkpoint: two tensors flatten to the same name '{prefix}'")
        if isinstance(obj, torch.Tensor):
            tensors[prefix] = obj.detach().cpu().contiguous()
            return {"__tensor__": prefix}
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: flatten_state(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}}
        if all(isinstance(k, int) and not isinstance(k, bool) for k in obj):  # optimizer state: param index keys
            return {"__intdict__": {str(k): flatten_state(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}}
        raise TypeError(f"checkpoint: dict at '{prefix}' has keys that are neither all str nor all int")
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint: cannot store {type(obj).__name__} at '{prefix}' without pickle")


def unflatten_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if "__ndarray__" in tree:
        return tensors[tree["__ndarray__"]].numpy()
    if "__dict__" in tree:
        return {k: unflatten_state(v, tensors) for k, v in tree["__dict__"].items()}
    if "__intdict__" in tree:
        return {int(k): unflatten_state(v, tensors) for k, v in tree["__intdict__"].items()}
    if "__tuple__" in tree:
        return tuple(unflatten_state(v, tensors) for v in tree["__tuple__"])
    raise InputError(f"checkpoint: unrecognized JSON node with keys {sorted(tree)}")


# ---------------------------------------------------------------------------------------------
# RNG states

def capture_rng(device: torch.device) -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of the python / numpy / torch CPU (/ CUDA) generator states."""
    py = random.getstate()
    np_state = np.random.get_state()
    js = {"python": [py[0], list(py[1]), py[2]],
          "numpy": [np_state[0], [int(v) for v in np_state[1]], int(np_state[2]), int(np_state[3]),
                    float(np_state[4])]}
    tensors = {"rng.torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng.torch_cuda"] = torch.cuda.get_rng_state(device)
    return js, tensors


def restore_rng(js: dict, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    version, internal, gauss = js["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if device.type == "cuda" and "rng.torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.torch_cuda"], device)


# ---------------------------------------------------------------------------------------------
# signals

class StopFlag:
    """SIGTERM/SIGINT set `requested`; the loop checkpoints and exits at the next step boundary.

    A second SIGINT while a stop is pending raises KeyboardInterrupt (the usual escape hatch).
    Handlers are installed only from the main thread and restored on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()


# ---------------------------------------------------------------------------------------------
# save / load

@dataclass
class Checkpoint:
    path: Path
    meta: dict  # state.json
    model: dict[str, torch.Tensor]
    optimizers: list[dict]  # optimizer state_dicts
    averager: dict[str, torch.Tensor] | None
    loader: Any  # this rank's loader state_dict
    rng_json: dict = field(default_factory=dict)
    rng_tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def _siblings(ckpt: Path) -> tuple[Path, Path]:
    return ckpt.with_name(ckpt.name + ".tmp"), ckpt.with_name(ckpt.name + ".old")


def save_checkpoint(ckpt_dir: str | Path, *, rank: int, world_size: int, meta: dict,
                    model_state: dict[str, torch.Tensor], optimizers: list[torch.optim.Optimizer],
                    averager_state: dict[str, torch.Tensor] | None, loader_state: Any,
                    device: torch.device, barrier=lambda: None) -> Path:
    """Write the checkpoint directory atomically. Every rank calls this; `barrier` synchronizes them."""
    final = Path(ckpt_dir)
    tmp, old = _siblings(final)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()

    rank_tensors: dict[str, torch.Tensor] = {}
    rng_js, rng_t = capture_rng(device)
    rank_tensors.update(rng_t)
    loader_tree = flatten_state(loader_state, "loader", rank_tensors)
    save_tensors(tmp / f"rank{rank}.safetensors", rank_tensors)
    atomic_write_text(tmp / f"rank{rank}.json", json.dumps({"rank": rank, "rng": rng_js, "loader": loader_tree}))

    if rank == 0:
        save_tensors(tmp / "model.safetensors", model_state)
        opt_tensors: dict[str, torch.Tensor] = {}
        opt_trees = [flatten_state(o.state_dict(), f"opt{i}", opt_tensors) for i, o in enumerate(optimizers)]
        save_tensors(tmp / "optim.safetensors", opt_tensors)
        if averager_state is not None:
            save_tensors(tmp / "averager.safetensors", averager_state)
    barrier()
    if rank == 0:
        state = dict(meta, format=FORMAT, world_size=world_size, optimizers=opt_trees,
                     has_averager=averager_state is not None)
        atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=1))
        # Swap in: checkpoint -> checkpoint.old, tmp -> checkpoint, drop old. A crash in between
        # leaves checkpoint.old complete, which `find_checkpoint` falls back to.
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def find_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint: CKPT, or CKPT.old when a swap was interrupted; None if neither."""
    final = Path(ckpt_dir)
    for path in (final, _siblings(final)[1]):
        if (path / STATE_FILE).is_file():
            return path
    return None


def load_checkpoint(ckpt_dir: str | Path, rank: int, world_size: int) -> Checkpoint:
    path = find_checkpoint(ckpt_dir)
    if path is None:
        raise InputError(f"{ckpt_dir}: no checkpoint to resume from (expected {STATE_FILE} in it)")
    try:
        meta = json.loads((path / STATE_FILE).read_text())
        rank_js = json.loads((path / f"rank{rank}.json").read_text())
    except FileNotFoundError as e:
        raise InputError(f"{path}: incomplete checkpoint ({e.filename} missing)") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: corrupt checkpoint JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{path}/{STATE_FILE}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("world_size") != world_size:
        raise InputError(f"{path}: checkpoint was written by {meta.get('world_size')} ranks; resume with the "
                         f"same number of processes (now {world_size})")
    opt_tensors = load_tensors(path / "optim.safetensors")
    optimizers = [unflatten_state(t, opt_tensors) for t in meta["optimizers"]]
    rank_tensors = load_tensors(path / f"rank{rank}.safetensors")
    averager = load_tensors(path / "averager.safetensors") if meta.get("has_averager") else None
    rng_tensors = {k: v for k, v in rank_tensors.items() if k.startswith("rng.")}
    return Checkpoint(path=path, meta=meta, model=load_tensors(path / "model.safetensors"), optimizers=optimizers,
                      averager=averager, loader=unflatten_state(rank_js["loader"], rank_tensors),
                      rng_json=rank_js["rng"], rng_tensors=rng_tensors)


class TrainingInterrupted(WorkError):
    """Stopped early (signal or --stop-after) after writing a checkpoint; resume to continue."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class Checkpointer:
    """Resumable training for a Trainer: writes and restores its checkpoint directory, periodically
    (train.checkpoint_every), at the end, and when SIGTERM/SIGINT or `stop_after` steps stop the run at
    a step boundary. The trainer runs without one when nothing needs resuming (a record's train_gpt.py).
    stop_after: a pre-emption drill; the schedule still follows max_steps / max_seconds."""

    def __init__(self, ckpt_dir: str | Path, stop_after: int | None = None):
        self.path = Path(ckpt_dir)
        self.stop = StopFlag()
        self.stop_after = stop_after

    def after_step(self, tr, stop_requested: bool) -> bool:
        """Checkpoint when due; raise TrainingInterrupted when the run must stop. True if written."""
        s, every = tr.state, tr.cfg.train.checkpoint_every
        # A signal at the very last step is not an interruption: the finished checkpoint is saved.
        interrupted = not s.finished and (stop_requested or (self.stop_after is not None and s.step >= self.stop_after))
        periodic = every > 0 and s.step % every == 0
        if not (interrupted or periodic or s.finished):
            return False
        self.save(tr)
        if interrupted:
            why = f"signal {self.stop.signum}" if stop_requested else f"--stop-after {self.stop_after}"
            log.info(f"stopped at step {s.step:,} ({why}); checkpoint saved in {self.path}")
            raise TrainingInterrupted(f"training stopped at step {s.step:,} ({why}); checkpoint saved in {self.path}, "
                                      "rerun with --resume to continue", s.step)
        return True

    def exists(self) -> bool:
        return find_checkpoint(self.path) is not None

    def save(self, tr) -> None:
        meta = {"loop": asdict(tr.state), "config": tr.cfg.to_dict()}
        save_checkpoint(self.path, rank=tr.proc.rank, world_size=tr.proc.world, meta=meta,
                        model_state=dict(tr.model.state_dict()), optimizers=tr.optimizers,
                        averager_state=tr.averager.checkpoint_state() if tr.averager and tr.averager.avg else None,
                        loader_state=tr.loader.state_dict(), device=tr.device, barrier=barrier)

    def load(self, tr) -> tuple[dict, dict[str, torch.Tensor]]:
        """Restore model, optimizers, averager, loader and loop state; returns the RNG state to restore
        after the compile warm-up."""
        c = load_checkpoint(self.path, tr.proc.rank, tr.proc.world)
        old_cfg = c.meta.get("config", {})
        if old_cfg.get("model") != tr.cfg.to_dict()["model"]:
            raise InputError(f"{c.path}: checkpoint was trained with a different model config; "
                             "resume with the same recipe and model.* overrides")
        changed = sorted(f"{sec}.{k}" for sec, vals in tr.cfg.to_dict().items() if isinstance(vals, dict)
                         for k, v in vals.items() if old_cfg.get(sec, {}).get(k) != v)
        if changed:
            log.info(f"resume: the config differs from the checkpoint's in {', '.join(changed)}")
        check_state(tr.model, c.model, f"{c.path}/model.safetensors")
        tr.model.load_state_dict(c.model)
        for o, s in zip(tr.optimizers, c.optimizers):
            o.load_state_dict(s)
        if tr.averager is not None and c.averager is not None:
            tr.averager.load_checkpoint_state({k: v.to(tr.device) for k, v in c.averager.items()})
        tr.loader.load_state_dict(c.loader)
        tr.state = type(tr.state)(**c.meta["loop"])
        log.info(f"resumed from {c.path} at step {tr.state.step:,} ({tr.state.elapsed_ms / 1000:.1f} s of training done)")
        return c.rng_json, c.rng_tensors
