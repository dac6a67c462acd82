"""The training loop: config + training shards -> final weights, Hessians and a summary.

One optimizer step consumes train.batch_tokens tokens globally: each of `world` ranks runs
grad_accum = batch_tokens / (world * micro_batch_tokens) micro-batches, the loss is scaled by
1/grad_accum and gradients are averaged over ranks once per step, so one GPU does the same math as
eight. The wall-clock budget (train.max_seconds minus gptq_reserve_seconds) counts training only:
compile warm-up, validation and checkpoint writes are off the clock. A training step never waits
for the device (no .item() or data-dependent shapes); the loop reads numbers only on log and
validation steps. The trainer writes no files but its metrics log: it returns the final weights and
Hessians, and the caller decides where they go.
"""
from __future__ import annotations

import copy
import math
import random
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pgolf import runtime
from pgolf.atomic import append_jsonl
from pgolf.config import Config, ConfigError
from pgolf.data.loader import make_loader
from pgolf.errors import InputError, WorkError
from pgolf.eval.methods import evaluate
from pgolf.logs import BARS, DETAIL, bar, fmt_bpb, fmt_rate, log, plural
from pgolf.model.gpt import GPT
from pgolf.model.weights import cast_embeddings, model_state
from pgolf.optim.averaging import make_averager
from pgolf.optim.groups import build_optimizers, describe_groups, freeze_params
from pgolf.optim.schedule import Schedule
from pgolf.quant.gptq import collect_hessians, hessian_targets
from pgolf.quant.qat import attach_qat, late_qat_should_enable, set_qat_enabled
from pgolf.train import checkpoint as ckpt

FEW_STEPS = 10  # a run that ends with fewer steps than this gets a warning


@dataclass
class TrainData:
    """What training reads: the train shards, and validation tokens with the bytes of every target."""

    train_paths: list[Path]
    val_tokens: np.ndarray  # periodic validation (train.val_tokens cap)
    val_bytes: np.ndarray
    final_tokens: np.ndarray  # the pre-quant score: the same tokens the artifact is scored on
    final_bytes: np.ndarray


@dataclass
class TrainResult:
    summary: dict
    state: dict[str, torch.Tensor]  # final (averaged) weights, on the CPU
    hessians: dict[str, torch.Tensor] | None  # GPTQ calibration on training batches
    recurrence: bool  # whether the exported model runs its recurrent layer schedule


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
    final_loss: float | None = None  # train loss of the last step
    log_step: int = 0  # step and elapsed time of the last metrics record (for windowed rates)
    log_elapsed_ms: float = 0.0
    last_loss: float | None = None  # the most recent logged train loss, and its step (for the bar)
    last_loss_step: int = 0


def grad_accum_steps(cfg: Config, world: int) -> int:
    t = cfg.train
    per_step = world * t.micro_batch_tokens
    if t.batch_tokens % per_step:
        raise ConfigError(f"train.batch_tokens: {t.batch_tokens:,} is not a multiple of world size ({world}) x "
                          f"train.micro_batch_tokens ({t.micro_batch_tokens:,}) = {per_step:,}")
    return t.batch_tokens // per_step


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated on GPU runs; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


class Trainer:
    def __init__(self, cfg: Config, data: TrainData, metrics: Path | None, proc: runtime.Process, *,
                 checkpointer: ckpt.Checkpointer | None = None, resume: bool = False, progress: bool = True):
        self.cfg, self.data, self.metrics, self.proc = cfg, data, metrics, proc
        self.checkpointer = checkpointer
        self.resume, self.progress = resume, progress
        self.device = proc.device
        self.accum = grad_accum_steps(cfg, proc.world)
        self.amp = runtime.autocast_dtype(cfg.train, self.device)
        runtime.set_threads(cfg.train)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # Same seed on every rank: identical initial weights without a broadcast.
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed)
        self.model = GPT(cfg.model).to(self.device)
        if cfg.train.embed_dtype == "bf16" and self.device.type == "cuda":
            cast_embeddings(self.model, torch.bfloat16)
        attach_qat(self.model, cfg.quant)  # "full": on now; "late": switched on later
        if cfg.optim.frozen:
            freeze_params(self.model, cfg.optim.frozen)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizers = build_optimizers(self.model, cfg.optim)
        self.schedule = Schedule.from_config(cfg.train, cfg.optim)
        self.averager = make_averager(cfg.optim)
        self.loader = make_loader(cfg.data.loader, data.train_paths, cfg.train.seq_len, cfg.train.micro_batch_tokens,
                                  proc.rank, proc.world, seed=cfg.train.seed, vocab_size=cfg.model.vocab_size,
                                  prefetch=cfg.data.prefetch, bos_id=cfg.model.bos_id)
        self.compiled = runtime.use_compile(cfg.train, self.device)
        if self.compiled and cfg.quant.qat != "off":
            # Keep the fp16 rounding of QAT scales, which inductor otherwise elides: the forward pass then
            # sees exactly the export grid (measured ~1e-4 off without it).
            import torch._inductor.config as inductor_config

            inductor_config.emulate_precision_casts = True
        self.fwd = torch.compile(self.model, dynamic=False) if self.compiled else self.model
        self.state = LoopState()
        self._rng_to_restore: tuple | None = None

    # -- one optimizer step (no host sync) -------------------------------------------------------
    def train_step(self) -> torch.Tensor:
        """Forward/backward over grad_accum micro-batches, average grads over ranks, step; mean loss."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for _ in range(self.accum):
            x, y = self.loader.next_batch()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with runtime.autocast(self.device, self.amp):
                loss = self.fwd(x, y, doc_isolated=True) if self.cfg.train.doc_isolated else self.fwd(x, y)
            (loss / self.accum).backward()
            total += loss.detach()
        all_reduce_grads(self.params)
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        for opt in self.optimizers:
            opt.step()
        return total / self.accum

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

    def warmup_count(self) -> int:
        """warmup_steps; with a wall-clock budget at least 1, so one-time costs stay off the clock."""
        t = self.cfg.train
        return max(t.warmup_steps, 1 if t.max_seconds > 0 else 0)

    def warmup(self) -> float:
        """Run the warm-up steps to prime compilation, then put everything back. Seconds spent."""
        n = self.warmup_count()
        if n <= 0:
            return 0.0
        t0 = time.perf_counter()
        snap = self.snapshot()
        for i in range(n):
            # The last step runs the recurrent schedule so its graph is compiled too.
            if self.cfg.model.recurrent and i == n - 1 and n > 1:
                self.model.set_recurrence(True)
            self.train_step()
        runtime.synchronize(self.device)
        self.restore(snap)
        runtime.barrier()
        return time.perf_counter() - t0

    # -- validation ----------------------------------------------------------------------------
    def validate(self, tokens: np.ndarray, nbytes: np.ndarray, progress: bool = False) -> dict:
        return evaluate(self.model, tokens, nbytes, self.cfg, self.device, "plain", progress=progress)

    # -- checkpoints ---------------------------------------------------------------------------
    def load_checkpoint(self) -> None:
        if self.checkpointer is None:
            raise InputError("--resume: this run keeps no checkpoints")
        self._rng_to_restore = self.checkpointer.load(self)
        self.model.set_recurrence(self.state.recurrence)
        if self.state.qat_on:
            set_qat_enabled(self.model, True)

    def _stop_requested(self) -> bool:
        return self.checkpointer is not None and self.checkpointer.stop.requested

    # -- logging -------------------------------------------------------------------------------
    def _position(self) -> str:
        s, t = self.state, self.cfg.train
        if self.schedule.budget_ms > 0:
            return f"step {s.step:,} ({s.elapsed_ms / 1000:.1f} of {self.schedule.budget_ms / 1000:.0f} s)"
        return f"step {s.step:,}/{t.max_steps:,}"

    def _record(self, loss: float | None, val: dict | None) -> None:
        s, t = self.state, self.cfg.train
        steps = s.step - s.log_step
        window_ms = s.elapsed_ms - s.log_elapsed_ms
        ms_per_step = window_ms / steps if steps > 0 else None
        rate = steps * t.batch_tokens / (window_ms / 1000) if window_ms > 0 else None
        if self.proc.is_main and self.metrics is not None:
            rec = {"step": s.step, "train_loss": loss, "lr_scale": s.lr_scale, "ms_per_step": ms_per_step,
                   "tokens_per_second": rate, "elapsed_s": s.elapsed_ms / 1000, "train_tokens": s.train_tokens,
                   "memory_bytes": peak_memory_bytes(self.device)}
            if val is not None:
                rec.update(val_loss=val["val_loss"], val_bpb=val["val_bpb"])
            append_jsonl(self.metrics, rec)
        parts = [self._position()]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if val is not None:
            parts.append(f"val_bpb {fmt_bpb(val['val_bpb'])} (val_loss {val['val_loss']:.4f})")
        parts.append(f"lr_scale {s.lr_scale:.3f}")
        if ms_per_step is not None:
            parts.append(f"{ms_per_step:.1f} ms/step, {fmt_rate(rate)}")
        log.info(" | ".join(parts))
        s.log_step, s.log_elapsed_ms = s.step, s.elapsed_ms

    def _flags(self, over_budget: bool) -> tuple[bool, bool]:
        """(over budget, stop requested) agreed by all ranks, so they stop at the same step."""
        if self.proc.world == 1:
            return over_budget, self._stop_requested()
        t = torch.tensor([float(over_budget), float(self._stop_requested())], device=self.device)
        runtime.all_reduce_max(t)
        return bool(t[0].item()), bool(t[1].item())

    # -- the loop ------------------------------------------------------------------------------
    def loop(self) -> None:
        cfg, s = self.cfg, self.state
        t = cfg.train
        budget_ms = self.schedule.budget_ms
        timed = budget_ms > 0
        pbar = bar(total=round(budget_ms / 1000) if timed else t.max_steps, desc="train",
                   unit="s" if timed else "step", initial=round(s.elapsed_ms / 1000) if timed else s.step) \
            if BARS else None
        if self.averager is not None and not self.averager.ready and cfg.optim.ema_from_init:
            self.averager.reset(self.model)  # EMA: the initial weights are the starting average
        runtime.synchronize(self.device)
        mark = time.perf_counter()
        try:
            while not s.finished:
                s.lr_scale = self.schedule.update(self.optimizers, s.step, s.elapsed_ms)
                if late_qat_should_enable(s.lr_scale, cfg.quant) and not s.qat_on:
                    set_qat_enabled(self.model, True)
                    s.qat_on = True
                    log.info(f"step {s.step:,}: late QAT on (lr_scale {s.lr_scale:.3f} < {cfg.quant.qat_lr_threshold})")
                if (cfg.model.recurrent and not s.recurrence
                        and self.schedule.progress(s.step, s.elapsed_ms) >= cfg.model.recur_start_frac):
                    self.model.set_recurrence(True)
                    s.recurrence = True
                    log.info(f"step {s.step:,}: depth recurrence on (layer order {self.model.schedule()})")

                loss = self.train_step()
                s.step += 1
                s.train_tokens += t.batch_tokens
                if self.averager is not None:
                    swa_on = (self.averager.mode == "ema"
                              or self.schedule.progress(s.step, s.elapsed_ms) >= self.averager.start_frac)
                    self.averager.update(self.model, s.step, enabled=swa_on)
                now = time.perf_counter()  # no device sync: like upstream, the clock may lead by a step
                s.elapsed_ms += (now - mark) * 1000.0
                mark = now

                over, stop_requested = self._flags(timed and s.elapsed_ms >= budget_ms)
                if over or s.step >= t.max_steps:
                    s.finished = True
                    s.stop_reason = "time budget" if over else "max_steps"
                is_log = s.finished or s.step == 1 or (t.log_every > 0 and s.step % t.log_every == 0)
                is_val = not s.finished and t.val_every > 0 and s.step % t.val_every == 0
                loss_value = None
                if is_log or is_val:
                    runtime.synchronize(self.device)
                    loss_value = float(runtime.all_reduce_mean(loss.detach().clone()).item())
                    if not math.isfinite(loss_value):
                        raise WorkError(f"training diverged: train loss {loss_value} at step {s.step:,}")
                    if BARS:
                        s.last_loss, s.last_loss_step = loss_value, s.step
                if pbar is not None:
                    if s.last_loss is not None:
                        pbar.set_postfix_str(f"loss {s.last_loss:.4f} @ step {s.last_loss_step:,}", refresh=False)
                    pbar.update((round(s.elapsed_ms / 1000) if timed else s.step) - pbar.n)
                val = self.validate(self.data.val_tokens, self.data.val_bytes) if is_val else None
                if s.finished:
                    s.final_loss = loss_value
                elif is_log or is_val:
                    self._record(loss_value, val)

                if self.checkpointer is not None and self.checkpointer.after_step(self, stop_requested):
                    is_val = True  # the checkpoint write is off the clock too
                if is_val:
                    runtime.synchronize(self.device)
                    mark = time.perf_counter()  # validation and checkpoint writes are off the clock
        finally:
            if pbar is not None:
                pbar.close()

    # -- after the loop ------------------------------------------------------------------------
    def calibrate_gptq(self) -> tuple[dict | None, float]:
        """Hessians over gptq_batches training batches (split over ranks), inside the time budget."""
        q = self.cfg.quant
        if not q.uses_gptq or q.gptq_calib != "train":
            return None, 0.0
        t0 = time.perf_counter()
        per_rank = -(-q.gptq_batches // self.proc.world)
        # plain windows of train.seq_len (a packed row is one long row; the records calibrate on sequences)
        batches = (self.loader.next_batch()[0].reshape(-1, self.cfg.train.seq_len).to(self.device)
                   for _ in range(per_rank))
        with runtime.autocast(self.device, self.amp):
            hessians = collect_hessians(self.model, batches, hessian_targets(self.model, q))
        if self.proc.world > 1:  # equal rows per rank, so the mean of means is the global mean
            hessians = {k: runtime.all_reduce_mean(v.to(self.device)).cpu() for k, v in sorted(hessians.items())}
        return hessians, time.perf_counter() - t0

    def finalize(self, warmup_s: float) -> TrainResult:
        cfg, s = self.cfg, self.state
        if self.averager is not None and self.averager.ready:
            self.averager.copy_to(self.model)
            log.info(f"exporting the {self.averager.mode.upper()} weights ({plural(self.averager.count, 'update')} folded in)")
        hessians, gptq_s = self.calibrate_gptq()
        if s.step < FEW_STEPS:
            log.warning(f"warning: training ended after {plural(s.step, 'step')} ({s.stop_reason}); the scores "
                        "below say little about the recipe")
        final = self.validate(self.data.final_tokens, self.data.final_bytes, progress=self.progress)
        self._record(s.final_loss, final)
        log.info(f"pre-quant val_bpb {fmt_bpb(final['val_bpb'])} (val_loss {final['val_loss']:.4f}) on "
                 f"{final['tokens']:,} targets, after {plural(s.step, 'step')} ({s.stop_reason})")
        summary = {
            "recipe": cfg.name, "seed": cfg.train.seed, "params": self.model.num_params(), "steps": s.step,
            "train_tokens": s.train_tokens, "train_seconds": s.elapsed_ms / 1000, "stop_reason": s.stop_reason,
            "val_loss_prequant": final["val_loss"], "val_bpb_prequant": final["val_bpb"],
            "world_size": self.proc.world, "device": str(self.device),
        }
        if DETAIL:  # run diagnostics (the counted script's summary keeps the score's story)
            summary.update({
                "tokens_per_second": s.train_tokens / (s.elapsed_ms / 1000) if s.elapsed_ms > 0 else None,
                "peak_memory_bytes": peak_memory_bytes(self.device),
                "prequant_eval_tokens": final["tokens"], "prequant_eval_seconds": final["seconds"],
                "grad_accum": self.accum, "batch_tokens": cfg.train.batch_tokens, "warmup_seconds": warmup_s,
                "gptq_calib_seconds": gptq_s, "averaging": self.averager.mode if self.averager else None,
                "recurrence_on": s.recurrence, "qat_on": s.qat_on or cfg.quant.qat == "full",
                "compile": self.compiled, "autocast": str(self.amp).replace("torch.", "") if self.amp else "fp32",
            })
        return TrainResult(summary, model_state(self.model), hessians, self.model.recurrence_active)

    def describe(self) -> str:
        c = self.cfg
        return (f"recipe {c.name}: {self.model.num_params():,} params, {c.train.batch_tokens:,} tokens/step "
                f"(world {self.proc.world} x grad_accum {self.accum} x {c.train.micro_batch_tokens:,}) on "
                f"{self.device}, torch.compile {'on' if self.compiled else 'off'}, "
                f"{'bf16 autocast' if self.amp else 'fp32'}")

    def run(self, metrics_truncate: Callable[[int], None] | None = None) -> TrainResult:
        if self.resume:
            self.load_checkpoint()
            if metrics_truncate is not None:
                # A finished run re-records its final evaluation, so drop the old final record too.
                metrics_truncate(self.state.step - int(self.state.finished))
        else:
            log.info(self.describe())
            if DETAIL:
                log.info("optimizer groups:\n" + describe_groups(self.optimizers))
        warmup_s = 0.0 if self.state.finished else self.warmup()
        if warmup_s:
            log.info(f"compile warm-up: {plural(self.warmup_count(), 'step')} in {warmup_s:.1f} s (state restored)")
        if self._rng_to_restore is not None:
            ckpt.restore_rng(*self._rng_to_restore, self.device)
        if self.checkpointer is None:
            self.loop()
        else:
            with self.checkpointer.stop:
                self.loop()
        return self.finalize(warmup_s)

    def close(self) -> None:
        self.loader.close()


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Average gradients over ranks with one flat all-reduce per dtype (missing grads count as zero).

    Done once per optimizer step after the last micro-batch, which is what DDP's no_sync + final
    sync computes; a flat buffer keeps it one collective and works the same with torch.compile.
    """
    if runtime.world() == 1 or not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        runtime.all_reduce_mean(flat)
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n


def train(cfg: Config, data: TrainData, metrics: Path | None, proc: runtime.Process, *,
          checkpointer: ckpt.Checkpointer | None = None, resume: bool = False, progress: bool = True,
          metrics_truncate: Callable[[int], None] | None = None) -> TrainResult:
    """Train per `cfg` in the process group `proc` (runtime.setup); every rank returns the result.
    `metrics`: the JSON-lines log of logged steps (None: not written). With a checkpointer the run
    is resumable (see pgolf.train.checkpoint.Checkpointer)."""
    trainer = None
    try:
        trainer = Trainer(cfg, data, metrics, proc, checkpointer=checkpointer, resume=resume, progress=progress)
        return trainer.run(metrics_truncate)
    finally:
        if trainer is not None:
            trainer.close()
