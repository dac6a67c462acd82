"""The training loop: config + shard dir -> run dir with final weights, logs and a summary.

One optimizer step consumes train.batch_tokens tokens globally: each of `world` ranks runs
grad_accum = batch_tokens / (world * micro_batch_tokens) micro-batches, the loss is scaled by
1/grad_accum and gradients are averaged over ranks once per step, so one GPU does the same math as
eight. The wall-clock budget (train.max_seconds minus gptq_reserve_seconds) counts training only:
compile warm-up, validation and checkpoint writes are off the clock.
"""
from __future__ import annotations

import copy
import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pgolf.config import Config, ConfigError
from pgolf.data.loader import make_loader
from pgolf.data.shards import list_shards, load_split
from pgolf.data.tokenizer import byte_tables, load_tokenizer
from pgolf.errors import InputError, WorkError
from pgolf.eval.api import eval_token_cap
from pgolf.eval.plain import evaluate_plain
from pgolf.model.gpt import GPT
from pgolf.model.io import CONFIG_FILE, atomic_write_text, model_state, save_run_model, save_tensors
from pgolf.optim.averaging import make_averager
from pgolf.optim.groups import build_optimizers, describe_groups
from pgolf.optim.schedule import Schedule
from pgolf.quant.qat import attach_qat, late_qat_should_enable, set_qat_enabled
from pgolf.train import checkpoint as ckpt
from pgolf.train import dist as D
from pgolf.train.runlog import RunLog, peak_memory_bytes

HESSIAN_FILE = "hessians.safetensors"
# Outputs of an earlier run in the same directory that a fresh (non-resumed) run replaces.
STALE_OUTPUTS = ("model.safetensors", HESSIAN_FILE, "summary.json", "metrics.jsonl", "train.log", "loss.png")


class TrainingInterrupted(WorkError):
    """Stopped early (signal or stop_after_steps) after writing a checkpoint; resume to continue."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@dataclass
class LoopState:
    """The loop's resumable scalars (saved in the checkpoint's state.json)."""

    step: int = 0
    elapsed_ms: float = 0.0
    train_tokens: int = 0
    recurrence: bool = False
    qat_on: bool = False
    finished: bool = False
    stop_reason: str = ""
    lr_scale: float = 1.0
    final_loss: float | None = None  # train loss of the last step, recorded with the final evaluation
    log_step: int = 0  # step and elapsed time of the last metrics record (for windowed rates)
    log_elapsed_ms: float = 0.0


def grad_accum_steps(cfg: Config, world: int) -> int:
    t = cfg.train
    per_step = world * t.micro_batch_tokens
    if t.batch_tokens % per_step:
        raise ConfigError(f"train.batch_tokens: {t.batch_tokens} is not a multiple of world_size ({world}) x "
                          f"train.micro_batch_tokens ({t.micro_batch_tokens}) = {per_step}")
    return t.batch_tokens // per_step


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    d = cfg.train.dtype
    return torch.bfloat16 if d == "bf16" or (d == "auto" and device.type == "cuda") else None


def use_compile(cfg: Config, device: torch.device) -> bool:
    return cfg.train.compile == "on" or (cfg.train.compile == "auto" and device.type == "cuda")


def resolve_data(cfg: Config, data_dir: str | Path | None) -> tuple[Path, list[Path], list[Path], Path]:
    """(data dir, train shards, val shards, tokenizer) with clear errors; train and val never overlap."""
    from pgolf.data.build import manifest_tokenizer

    raw = data_dir if data_dir not in (None, "") else cfg.data.path
    if not raw:
        raise InputError("--data: no data directory given (pass --data DIR or set data.path)")
    d = Path(raw)
    if not d.is_dir():
        raise InputError(f"{d}: data directory not found")
    train_paths, val_paths = list_shards(d, "train"), list_shards(d, "val")
    if not train_paths:
        raise InputError(f"{d}: no fineweb_train_*.bin shards (build them with `pgolf data build`)")
    if not val_paths:
        raise InputError(f"{d}: no fineweb_val_*.bin shards (needed for validation)")
    overlap = {p.resolve() for p in train_paths} & {p.resolve() for p in val_paths}
    if overlap:
        raise InputError(f"{d}: train and val shards resolve to the same files: {sorted(map(str, overlap))}")
    tok = Path(cfg.data.tokenizer) if cfg.data.tokenizer else manifest_tokenizer(d)
    if tok is None:
        raise InputError(f"{d}: no tokenizer known (set data.tokenizer; val_bpb needs its byte tables)")
    return d, train_paths, val_paths, tok


class Trainer:
    def __init__(self, cfg: Config, data_dir: str | Path | None, out_dir: str | Path, resume: bool,
                 progress: bool, stop_after_steps: int | None, info: D.DistInfo):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.resume = resume
        self.stop_after_steps = stop_after_steps
        self.data_dir, self.train_paths, val_paths, tok_path = resolve_data(cfg, data_dir)
        cfg.data.path = str(self.data_dir)
        sp = load_tokenizer(tok_path)
        if sp.vocab_size() != cfg.model.vocab_size:
            raise InputError(f"{tok_path}: tokenizer has {sp.vocab_size()} tokens but model.vocab_size is "
                             f"{cfg.model.vocab_size}")
        cfg.data.tokenizer = str(tok_path)
        self.tables = byte_tables(sp)
        self.val_tokens = load_split(self.data_dir, "val", cfg.model.vocab_size, cfg.train.val_tokens)
        # The pre-quant number is measured on exactly the tokens the artifact will be scored on.
        final_cap, _ = eval_token_cap(cfg, info.device)
        self.final_val_tokens = (self.val_tokens if final_cap == cfg.train.val_tokens else
                                 load_split(self.data_dir, "val", cfg.model.vocab_size, final_cap))

        self.info = info
        self.device = self.info.device
        self.accum = grad_accum_steps(cfg, self.info.world_size)
        self.log = RunLog(self.out, enabled=self.info.is_main, echo=progress)
        self.progress = progress
        self.amp = autocast_dtype(cfg, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        # Same seed on every rank: identical initial weights without a broadcast.
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed)
        self.model = GPT(cfg.model).to(self.device)
        self.qat_names = attach_qat(self.model, cfg.quant)  # "full": on now; "late": switched on later
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizers = build_optimizers(self.model, cfg.optim)
        self.schedule = Schedule.from_config(cfg.train, cfg.optim)
        self.averager = make_averager(cfg.optim)
        self.loader = make_loader(cfg.data.loader, self.train_paths, cfg.train.seq_len, cfg.train.micro_batch_tokens,
                                  self.info.rank, self.info.world_size, seed=cfg.train.seed,
                                  vocab_size=cfg.model.vocab_size, prefetch=cfg.data.prefetch)
        if use_compile(cfg, self.device) and cfg.quant.qat != "off":
            # Keep the fp16 rounding of QAT scales, which inductor otherwise elides: the forward pass then
            # sees exactly the export grid (measured ~1e-4 off without it).
            import torch._inductor.config as inductor_config

            inductor_config.emulate_precision_casts = True
        self.fwd = torch.compile(self.model, dynamic=False) if use_compile(cfg, self.device) else self.model
        self.state = LoopState()
        self.stop = ckpt.StopFlag()
        self._rng_to_restore: tuple | None = None
        self.recur_configured = cfg.model.recur_start >= 0

    # -- one optimizer step --------------------------------------------------------------------
    def _autocast(self):
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def train_step(self) -> torch.Tensor:
        """Forward/backward over grad_accum micro-batches, average grads over ranks, step; mean loss."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for _ in range(self.accum):
            x, y = self.loader.next_batch()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                loss = self.fwd(x, y)
            (loss / self.accum).backward()
            total += loss.detach()
        D.all_reduce_grads(self.params)
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        for opt in self.optimizers:
            opt.step()
        return total / self.accum

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- compile warm-up -----------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Everything a training step changes: weights, optimizer state, loader position, RNG, flags."""
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "optim": [copy.deepcopy(o.state_dict()) for o in self.optimizers],
                "loader": copy.deepcopy(self.loader.state_dict()),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "recurrence": self.model.recurrence_active}

    def restore(self, snap: dict) -> None:
        self.model.load_state_dict(snap["model"])
        for o, s in zip(self.optimizers, snap["optim"]):
            o.load_state_dict(copy.deepcopy(s))
            o.zero_grad(set_to_none=True)
        self.loader.load_state_dict(copy.deepcopy(snap["loader"]))
        torch.set_rng_state(snap["rng"])
        if snap["cuda_rng"] is not None:
            torch.cuda.set_rng_state(snap["cuda_rng"], self.device)
        self.model.set_recurrence(snap["recurrence"])

    def warmup(self) -> float:
        """Run warmup_steps real steps to prime compilation, then put everything back. Seconds spent."""
        n = self.cfg.train.warmup_steps
        if n <= 0:
            return 0.0
        t0 = time.perf_counter()
        snap = self.snapshot()
        for i in range(n):
            # The last step runs the recurrent schedule so its graph is compiled too.
            if self.recur_configured and i == n - 1 and n > 1:
                self.model.set_recurrence(True)
            self.train_step()
        self._sync()
        self.restore(snap)
        D.barrier()
        return time.perf_counter() - t0

    # -- validation ----------------------------------------------------------------------------
    def evaluate(self, tokens: np.ndarray) -> dict:
        return evaluate_plain(self.fwd, tokens, self.tables, self.cfg.eval.seq_len or self.cfg.train.seq_len,
                              self.cfg.eval.batch_seqs, self.device, self.info.rank, self.info.world_size,
                              self.cfg.eval.doc_isolated, self.amp, progress=False)

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        meta = {"loop": asdict(self.state), "config": self.cfg.to_dict()}
        ckpt.save_checkpoint(self.out, rank=self.info.rank, world_size=self.info.world_size, meta=meta,
                             model_state=model_state(self.model), optimizers=self.optimizers,
                             averager_state=self.averager.state_dict() if self.averager and self.averager.avg else None,
                             loader_state=self.loader.state_dict(), device=self.device, barrier=D.barrier)

    def load_checkpoint(self) -> None:
        c = ckpt.load_checkpoint(self.out, self.info.rank, self.info.world_size)
        old_cfg = c.meta.get("config", {})
        if old_cfg.get("model") != self.cfg.to_dict()["model"]:
            raise InputError(f"{c.path}: checkpoint was trained with a different model config; "
                             "resume with the same recipe and model.* overrides")
        changed = sorted(f"{sec}.{k}" for sec, vals in self.cfg.to_dict().items() if isinstance(vals, dict)
                         for k, v in vals.items() if old_cfg.get(sec, {}).get(k) != v)
        if changed:
            self.log.log(f"resume: config differs from the checkpoint in {', '.join(changed)}")
        self.model.load_state_dict(c.model)
        for o, s in zip(self.optimizers, c.optimizers):
            o.load_state_dict(s)
        if self.averager is not None and c.averager is not None:
            self.averager.load_state_dict({k: v.to(self.device) for k, v in c.averager.items()})
        self.loader.load_state_dict(c.loader)
        self.state = LoopState(**c.meta["loop"])
        self.model.set_recurrence(self.state.recurrence)
        if self.state.qat_on:
            set_qat_enabled(self.model, True)
        self._rng_to_restore = (c.rng_json, c.rng_tensors)
        self.log.log(f"resumed from {c.path} at step {self.state.step} "
                     f"({self.state.elapsed_ms / 1000:.1f}s of training done)")

    # -- the loop ------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        if self.resume:
            return
        if ckpt.find_checkpoint(self.out) is not None:  # every rank checks, so every rank raises
            raise InputError(f"{self.out}: already holds a checkpoint; pass --resume to continue it or "
                             "choose a new --out")
        if self.info.is_main:
            for name in STALE_OUTPUTS:
                (self.out / name).unlink(missing_ok=True)
        D.barrier()

    def _record(self, loss: float | None, val: dict | None) -> None:
        s = self.state
        steps = s.step - s.log_step
        window_ms = s.elapsed_ms - s.log_elapsed_ms
        rec = {"step": s.step, "train_loss": loss, "lr_scale": s.lr_scale,
               "ms_per_step": window_ms / steps if steps > 0 else None,
               "tokens_per_second": steps * self.cfg.train.batch_tokens / (window_ms / 1000) if window_ms > 0 else None,
               "elapsed_s": s.elapsed_ms / 1000, "train_tokens": s.train_tokens,
               "memory_bytes": peak_memory_bytes(self.device)}
        if val is not None:
            rec.update(val_loss=val["val_loss"], val_bpb=val["val_bpb"])
        self.log.metrics(rec)
        parts = [f"step {s.step}/{self.cfg.train.max_steps}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if val is not None:
            parts.append(f"val_loss {val['val_loss']:.4f} val_bpb {val['val_bpb']:.4f}")
        parts.append(f"lr {s.lr_scale:.3f}")
        if rec["ms_per_step"] is not None:
            parts.append(f"{rec['ms_per_step']:.1f} ms/step {rec['tokens_per_second']:,.0f} tok/s")
        parts.append(f"train {s.elapsed_ms / 1000:.1f}s")
        self.log.log(" ".join(parts))
        s.log_step, s.log_elapsed_ms = s.step, s.elapsed_ms

    def _flags(self, over_budget: bool) -> tuple[bool, bool]:
        """(over budget, stop requested) agreed by all ranks, so they stop at the same step."""
        if self.info.world_size == 1:
            return over_budget, self.stop.requested
        t = torch.tensor([float(over_budget), float(self.stop.requested)], device=self.device)
        D.all_reduce_max(t)
        return bool(t[0].item()), bool(t[1].item())

    def loop(self) -> None:
        cfg, s = self.cfg, self.state
        t = cfg.train
        budget_ms = self.schedule.budget_ms
        self.log.start_bar(t.max_steps, s.step, self.progress)
        self._sync()
        mark = time.perf_counter()
        while not s.finished:
            s.lr_scale = self.schedule.update(self.optimizers, s.step, s.elapsed_ms)
            if late_qat_should_enable(s.lr_scale, cfg.quant) and not s.qat_on:
                set_qat_enabled(self.model, True)
                s.qat_on = True
                self.log.log(f"step {s.step}: late QAT on (lr scale {s.lr_scale:.3f} < {cfg.quant.qat_lr_threshold})")
            if (self.recur_configured and not s.recurrence
                    and self.schedule.progress(s.step, s.elapsed_ms) >= cfg.model.recur_start_frac):
                self.model.set_recurrence(True)
                s.recurrence = True
                self.log.log(f"step {s.step}: depth recurrence on (schedule {self.model.schedule()})")

            loss = self.train_step()
            s.step += 1
            s.train_tokens += t.batch_tokens
            if self.averager is not None:
                swa_on = (self.averager.mode == "ema"
                          or self.schedule.progress(s.step, s.elapsed_ms) >= self.averager.start_frac)
                self.averager.update(self.model, s.step, enabled=swa_on)
            self._sync()
            now = time.perf_counter()
            s.elapsed_ms += (now - mark) * 1000.0
            mark = now

            over, stop_requested = self._flags(budget_ms > 0 and s.elapsed_ms >= budget_ms)
            if over or s.step >= t.max_steps:
                s.finished = True
                s.stop_reason = "time budget" if over else "max_steps"
            is_log = s.finished or s.step == 1 or (t.log_every > 0 and s.step % t.log_every == 0)
            is_val = not s.finished and t.val_every > 0 and s.step % t.val_every == 0
            loss_value = None
            if is_log or is_val:
                loss_value = float(D.all_reduce_mean(loss.detach().clone()).item())
                if not math.isfinite(loss_value):
                    raise WorkError(f"training diverged: train loss {loss_value} at step {s.step}")
            self.log.bar_update(1, **({"loss": f"{loss_value:.4f}"} if loss_value is not None else {}))
            val = self.evaluate(self.val_tokens) if is_val else None
            if s.finished:
                s.final_loss = loss_value  # recorded with the final evaluation in finalize()
            elif is_log or is_val:
                self._record(loss_value, val)

            # A signal at the very last step is not an interruption: the finished checkpoint is saved.
            interrupted = not s.finished and (stop_requested or (self.stop_after_steps is not None
                                                                 and s.step >= self.stop_after_steps))
            periodic = t.checkpoint_every > 0 and s.step % t.checkpoint_every == 0
            if interrupted or periodic or s.finished:
                self.save_checkpoint()
            if interrupted:
                why = f"signal {self.stop.signum}" if stop_requested else f"stop_after_steps={self.stop_after_steps}"
                self.log.log(f"stopped at step {s.step} ({why}); checkpoint saved in {self.out / ckpt.CKPT_DIR}")
                raise TrainingInterrupted(f"training stopped at step {s.step} ({why}); checkpoint saved, "
                                          "rerun with --resume to continue", s.step)
            if is_val or interrupted or periodic:
                self._sync()
                mark = time.perf_counter()  # validation and checkpoint writes are off the clock
        self.log.close_bar()

    # -- after the loop ------------------------------------------------------------------------
    def calibrate_gptq(self) -> float:
        """Hessians over gptq_batches training batches (split over ranks) -> RUN/hessians.safetensors."""
        q = self.cfg.quant
        if not any(g.gptq for g in q.groups) or q.gptq_calib != "train":
            return 0.0
        from pgolf.quant.gptq import collect_hessians, gptq_module_names

        t0 = time.perf_counter()
        per_rank = -(-q.gptq_batches // self.info.world_size)
        batches = (self.loader.next_batch()[0].to(self.device) for _ in range(per_rank))
        with self._autocast():
            hessians = collect_hessians(self.model, batches, gptq_module_names(self.model, q))
        if self.info.world_size > 1:  # equal rows per rank, so the mean of means is the global mean
            hessians = {k: D.all_reduce_mean(v.to(self.device)).cpu() for k, v in sorted(hessians.items())}
        if self.info.is_main:
            save_tensors(self.out / HESSIAN_FILE, hessians)
        D.barrier()
        return time.perf_counter() - t0

    def finalize(self, warmup_s: float) -> dict:
        cfg, s = self.cfg, self.state
        if self.averager is not None and self.averager.ready:
            self.averager.copy_to(self.model)
            self.log.log(f"exporting {self.averager.mode.upper()} weights ({self.averager.count} folded in)")
        gptq_s = self.calibrate_gptq()
        if self.info.is_main:
            save_run_model(self.out, self.model, cfg, state=model_state(self.model))
        t0 = time.perf_counter()
        final = self.evaluate(self.final_val_tokens)
        eval_s = time.perf_counter() - t0
        self._record(s.final_loss, final)
        self.log.log(f"final ({s.stop_reason}) step {s.step}: val_loss {final['val_loss']:.4f} "
                     f"val_bpb {final['val_bpb']:.4f} on {final['tokens']:,} tokens (pre-quant)")
        summary = {
            "recipe": cfg.name, "seed": cfg.train.seed, "params": self.model.num_params(), "steps": s.step,
            "train_tokens": s.train_tokens, "train_seconds": s.elapsed_ms / 1000,
            "tokens_per_second": s.train_tokens / (s.elapsed_ms / 1000) if s.elapsed_ms > 0 else None,
            "peak_memory_bytes": peak_memory_bytes(self.device),
            "val_loss_prequant": final["val_loss"], "val_bpb_prequant": final["val_bpb"],
            "prequant_eval_tokens": final["tokens"], "prequant_eval_seconds": eval_s,
            "stop_reason": s.stop_reason, "world_size": self.info.world_size, "device": str(self.device),
            "grad_accum": self.accum, "batch_tokens": cfg.train.batch_tokens, "warmup_seconds": warmup_s,
            "gptq_calib_seconds": gptq_s, "averaging": self.averager.mode if self.averager else None,
            "recurrence_on": s.recurrence, "qat_on": s.qat_on or cfg.quant.qat == "full",
            "run_dir": str(self.out),
        }
        self.log.write_summary(summary)
        self.log.plot()
        return summary

    def run(self) -> dict:
        self._prepare_run_dir()
        if self.resume:
            self.load_checkpoint()
        if self.info.is_main:
            atomic_write_text(self.out / CONFIG_FILE, self.cfg.to_json())
        self.log.write_env(self.device, self.info.world_size)
        if not self.resume:
            self.log.log(f"recipe {self.cfg.name}: {self.model.num_params():,} params, world {self.info.world_size}, "
                         f"grad_accum {self.accum}, device {self.device}, compile {self.fwd is not self.model}, "
                         f"autocast {self.amp}")
            self.log.log("optimizer groups:\n" + describe_groups(self.optimizers))
        else:
            # A finished run re-records its final evaluation, so drop the old final record too.
            self.log.truncate_metrics(self.state.step - int(self.state.finished))
        warmup_s = 0.0 if self.state.finished else self.warmup()
        if warmup_s:
            self.log.log(f"compile warm-up: {self.cfg.train.warmup_steps} steps in {warmup_s:.1f}s (state restored)")
        if self._rng_to_restore is not None:
            ckpt.restore_rng(*self._rng_to_restore, self.device)
        with self.stop:
            self.loop()
        return self.finalize(warmup_s)


def train(cfg: Config, data_dir: str | Path | None, out_dir: str | Path, resume: bool = False,
          progress: bool = True, *, stop_after_steps: int | None = None) -> dict:
    """Train per `cfg` on the shards in data_dir; write RUN files; return the summary (all ranks).

    stop_after_steps: checkpoint and raise TrainingInterrupted after that many steps (a pre-emption
    drill; the schedule still follows max_steps / max_seconds). SIGTERM/SIGINT do the same at the
    next step boundary.
    """
    info = D.setup(cfg.train.device)
    trainer = None
    try:
        trainer = Trainer(cfg, data_dir, out_dir, resume, progress, stop_after_steps, info)
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.log.close_bar()
            trainer.loader.close()
        D.cleanup(info)
