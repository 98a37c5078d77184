"""The one place that wraps the single-device model: activation checkpointing + `deepspeed.initialize`.

`Trainer` owns the run: data, engine, checkpoints, the step loop. One optimizer step = `gradient_accumulation_steps`
micro batches per rank; DeepSpeed averages gradients over micro batches and ranks, clips (gradient_clipping) and
steps AdamW, then our LambdaLR schedule (linear warmup from lr x warmup_start_factor to lr over
round(warmup_fraction x max_steps) steps, then cosine to lr x min_lr_ratio: torchvision's LinearLR + CosineAnnealingLR
as the reference used; DeepSpeed's WarmupCosineLR would spend the first step at lr 0).

Non-finite loss: a micro batch whose loss is NaN/inf back-propagates NaN into every gradient instead, so DeepSpeed's
ZeRO overflow check (global grad norm non-finite, agreed by all ranks) skips the whole optimizer step and clears the
gradients; the lr schedule does not advance. After --max-bad-steps skipped steps in a row the run stops.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import signal
import socket
import time
from pathlib import Path

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from pipeline import data as D
from pipeline.checkpoint import CheckpointManager
from pipeline.collate import MexmaCollator
from pipeline.config import TrainConfig, resolve_ds_config, write_run_files
from pipeline.metrics import MetricsLogger, log
from pipeline.model import build_model
from pipeline.runrecord import RUN_FILES, check_relaunch_on_rank0, manifest_sha256, run_record, take_output_lock
from pipeline.validate import Validator
from pipeline.xsim_eval import XsimHook


class TrainingStoppedError(RuntimeError):
    """The run cannot go on (too many non-finite steps); the message says why."""


def init_distributed() -> tuple[int, int]:
    """Join the launcher's process group (deepspeed / torchrun set RANK etc.), or form a 1-rank group for `python`."""
    if "RANK" not in os.environ:
        with socket.socket() as s:  # a free port for the 1-process group
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(os.environ.get("MASTER_PORT", port)),
        )
    accel = get_accelerator()
    if accel.device_name() == "cpu":
        clear_stale_jit_lock("deepspeed_shm_comm")  # DeepSpeed JIT-loads this op in init_distributed on CPU
    if not dist.is_initialized():
        backend = "gloo" if accel.device_name() == "cpu" else accel.communication_backend_name()
        deepspeed.init_distributed(dist_backend=backend)
    if accel.device_name() == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # N ranks on one host each defaulting to all cores oversubscribe the CPU N-fold: split the cores instead
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or dist.get_world_size())
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return dist.get_rank(), dist.get_world_size()


def clear_stale_jit_lock(op_name: str, max_age_s: float = 300.0) -> bool:
    """Remove a torch JIT-extension build lock left by a killed process; returns True when one was removed.

    torch.utils.cpp_extension holds `<build dir>/lock` while it (re)builds or merely loads an op (well under a
    second when up to date, ~30 s for a real build); a process SIGKILLed inside that window leaves the file behind
    and every later launch then polls for it forever. A lock older than max_age_s has no live owner."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        lock = Path(_get_build_directory(op_name, verbose=False)) / "lock"
        age = time.time() - lock.stat().st_mtime
    except (ImportError, OSError, RuntimeError):
        return False
    if age < max_age_s:
        return False
    lock.unlink(missing_ok=True)
    log.warning("removed a stale JIT build lock %s (%.0f s old, left by a killed process)", lock, age)
    return True


class WarmupCosine:
    """LR factor at scheduler step s: linear f0 -> 1 over W steps, then cosine 1 -> min over T - W steps."""

    def __init__(self, total_steps: int, warmup_fraction: float, start_factor: float, min_ratio: float):
        self.total, self.warmup = total_steps, round(warmup_fraction * total_steps)
        self.start, self.min = start_factor, min_ratio

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return self.start + (1.0 - self.start) * s / self.warmup
        progress = min(1.0, (s - self.warmup) / max(1, self.total - self.warmup))
        return self.min + (1.0 - self.min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_engine(cfg: TrainConfig, model: torch.nn.Module, ds_config: dict, max_steps: int):
    """Activation checkpointing (if asked) + deepspeed.initialize with our LR schedule -> engine."""
    if cfg.model.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    o = cfg.optim
    schedule = WarmupCosine(max_steps, o.warmup_fraction, o.warmup_start_factor, o.min_lr_ratio)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, o.weight_decay),
        config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
    )
    return engine


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as the original's configure_optimizers: decay only parameters of >= 2 dimensions (matrices,
    embeddings), never biases or LayerNorm weights; the empty group is left out. Order: decayed, then not."""
    params = [p for p in model.parameters() if p.requires_grad]  # shared (tied) parameters appear once
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def apply_optim_config(engine, cfg: TrainConfig, max_steps: int, applied_steps: int) -> None:
    """After a checkpoint load, make the optimizer and the LR schedule this config's: DeepSpeed restores the saved
    param groups (lr, betas, eps, weight decay) and LambdaLR.load_state_dict the old WarmupCosine's length and base
    lr. The lr is a pure function of the config and the applied (not skipped) steps: WarmupCosine(max_steps)(applied)
    x --lr, whatever scheduler state the checkpoint held."""
    o, sched = cfg.optim, engine.lr_scheduler
    sched.last_epoch = applied_steps  # LambdaLR's position = optimizer steps taken (skipped ones do not advance it)
    groups = sched.optimizer.param_groups
    decays = [g["weight_decay"] for g in param_groups(engine.module, o.weight_decay)]
    schedule = WarmupCosine(max_steps, o.warmup_fraction, o.warmup_start_factor, o.min_lr_ratio)
    sched.lr_lambdas, sched.base_lrs = [schedule] * len(groups), [o.lr] * len(groups)
    for group, decay in zip(groups, decays, strict=True):
        lr = o.lr * schedule(sched.last_epoch)
        group.update(lr=lr, initial_lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=decay)
    sched._last_lr = [g["lr"] for g in groups]


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Data + engine + checkpoints + logging for one run (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, ds_config: dict):
        self.cfg = cfg
        self.rank, self.world = init_distributed()
        self.out = Path(cfg.run.output_dir)
        self.lock = take_output_lock(self.out, self.rank)  # before anything is written to --output-dir
        self._seed(cfg.run.seed)
        self.ds_config = resolve_ds_config(cfg, ds_config, self.world)
        self.gas = self.ds_config["gradient_accumulation_steps"]
        self._load_data()
        self.xsim = XsimHook.for_run(cfg, self.specials, self.rank, self.world)  # checks --xsim-data now
        self.max_steps = cfg.run.max_steps or max(1, int(cfg.run.epochs * len(self.sampler) / self.gas))
        model_cfg = dataclasses.replace(cfg.model, gradient_checkpointing=False)  # applied in build_engine only
        model = build_model(model_cfg, self.vocab_size, self.specials["pad"])
        self.engine = build_engine(cfg, model, self.ds_config, self.max_steps)
        self.record = run_record(cfg, self.max_steps, self.manifest, manifest_sha256(cfg.data.path), self.world)
        torch.manual_seed(cfg.run.seed + 1 + self.rank)  # dropout: same init everywhere, distinct masks per rank
        self.collator = MexmaCollator(
            self.specials,
            self.vocab_size,
            cfg.data.src_mask_prob,
            cfg.data.trg_mask_prob,
            seed=cfg.run.seed + self.rank,
        )
        self.ckpt = CheckpointManager(self.out, keep=cfg.run.keep_checkpoints, rank=self.rank)
        self.metrics: MetricsLogger | None = None  # started by resume(), after the relaunch checks (wandb id)
        self.step, self.skipped_total, self.bad_in_row, self.elapsed_before = 0, 0, 0, 0.0

    def _seed(self, seed: int) -> None:
        """Same init on every rank (seed), different dropout streams per rank afterwards (seed + rank)."""
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _verify_on_rank0(self) -> None:
        """Rank 0 checks the shards (once per host file system); every rank raises its verdict, none waits forever."""
        error = None
        if self.rank == 0:
            try:
                D.verify_shards(self.cfg.data.path, self.manifest, self.cfg.data.verify)
            except D.DataError as e:
                error = str(e)
        box = [error]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            raise D.DataError(box[0])

    def _load_data(self) -> None:
        c = self.cfg.data
        self.manifest = D.load_manifest(c.path)
        self._verify_on_rank0()
        self.specials = D.special_ids(self.manifest)
        self.vocab_size = int(self.manifest["tokenizer"]["vocab_size"])
        self.train_ds = D.load_split(c.path, "train", self.manifest)
        lengths = D.pair_lengths(self.train_ds, c.max_length)
        micro = self.ds_config["train_micro_batch_size_per_gpu"]
        self.sampler = D.DistributedBatchSampler(
            lengths,
            batch_pairs=0 if c.batch_tokens else micro,
            batch_tokens=c.batch_tokens,
            bucket_batches=c.bucket_batches,
            seed=self.cfg.run.seed,
            rank=self.rank,
            world_size=self.world,
        )
        self.validator = self._make_validator(micro)

    def _make_validator(self, batch_pairs: int) -> Validator | None:
        c = self.cfg.data
        if self.cfg.run.valid_every < 0 or not (Path(c.path) / "valid").is_dir():
            return None
        valid = D.load_split(c.path, "valid", self.manifest)
        masking = dict(
            special_ids=self.specials,
            vocab_size=self.vocab_size,
            src_mask_prob=c.src_mask_prob,
            trg_mask_prob=c.trg_mask_prob,
        )
        return Validator(
            valid,
            D.pair_lengths(valid, c.max_length),
            batch_pairs=batch_pairs,
            n_batches=c.valid_batches,
            max_length=c.max_length,
            seed=self.cfg.run.seed,
            rank=self.rank,
            world_size=self.world,
            **masking,
        )

    # -- state ---------------------------------------------------------------------------------------------------
    def client_state(self) -> dict:
        return {
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "collator": self.collator.state_dict(),
            "rng": rng_state(),
            "skipped_total": self.skipped_total,
            "bad_in_row": self.bad_in_row,
            "elapsed_s": self.elapsed_before + time.time() - self.t_start,
            "run_record": self.record,  # also saved as run_record.json: what a relaunch is compared with
        }

    def resume(self) -> None:
        """Relaunch rules (pipeline/runrecord.py): every refusal comes before anything on disk changes; then the
        checkpoint is loaded, the optimizer and schedule set from this config, and rank 0 writes the run records."""
        if not self.cfg.run.resume:
            self.ckpt.set_aside(also=RUN_FILES)
        tag = self.ckpt.find_resume() if self.cfg.run.resume else None
        if tag is not None:
            check_relaunch_on_rank0(self.ckpt.root / tag, self.record, self.cfg.run.allow_config_change, self.rank)
            self._load(tag)
        if self.rank == 0:
            write_run_files(self.record, self.ds_config, self.out, Path(self.cfg.data.path) / "tokenizer")
        c = self.cfg.run
        self.metrics = MetricsLogger(
            self.out, self.rank, c.wandb, c.wandb_project, c.run_name, self.record["config"], c.log_every
        )
        self.metrics.truncate_after(self.step)
        if tag is not None:
            log.info("resumed from %s (step %d, epoch %d)", self.ckpt.root / tag, self.step, self.sampler.state.epoch)

    def _load(self, tag: str) -> None:
        state = self.ckpt.load(self.engine, tag)
        self.step, self.skipped_total, self.bad_in_row = state["step"], state["skipped_total"], state["bad_in_row"]
        self.elapsed_before = state.get("elapsed_s", 0.0)
        self.sampler.load_state_dict(state["sampler"])
        self.collator.load_state_dict(state["collator"])
        set_rng_state(state["rng"])
        apply_optim_config(self.engine, self.cfg, self.max_steps, self.step - self.skipped_total)

    # -- the loop ------------------------------------------------------------------------------------------------
    def train(self) -> int:
        """Run to max_steps (or the wall-clock budget, or a stop signal); returns the last step. Checkpoints at the
        end; validates at the end unless stopped by a signal (preemption: save first, fast)."""
        self.t_start, self.stop_signal = time.time(), None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        self.resume()
        if self.step >= self.max_steps:
            log.info(
                "%s already holds a finished run (step %d of %d); --no-resume starts over",
                self.out,
                self.step,
                self.max_steps,
            )
            return self.step
        stop = None
        while self.step < self.max_steps and stop is None:
            self._after_step(self.train_step())
            stop = self._should_stop(self.cfg.run.max_minutes * 60)
        every = self.cfg.run.valid_every
        if stop != "signal" and (every == 0 or (every > 0 and self.step % every)):
            self.validate()
        if self.xsim is not None and stop != "signal":
            self.xsim.at_end(self)  # scores the last step unless the cadence just did (may save it as `best`)
        self.ckpt.save(self.engine, self.step, self.client_state())
        self.metrics.close()
        return self.step

    def _after_step(self, record: dict) -> None:
        """Log, stop on too many bad steps, validate and checkpoint on their cadence."""
        self.metrics.write(record)
        self.metrics.progress(record, self.max_steps)
        r = self.cfg.run
        if self.bad_in_row >= r.max_bad_steps:
            raise TrainingStoppedError(
                f"{self.bad_in_row} optimizer steps in a row had a non-finite loss (limit "
                f"--max-bad-steps {r.max_bad_steps}) at step {self.step}; lower --lr or "
                "check the data. The last complete checkpoint is kept"
            )
        if r.valid_every > 0 and self.step % r.valid_every == 0:
            self.validate()
        if r.save_every and self.step % r.save_every == 0:
            self.ckpt.save(self.engine, self.step, self.client_state())
        if self.xsim is not None:
            self.xsim.after_step(self)  # every --xsim-every steps; an improvement saves this step as `best`

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum

    def _should_stop(self, budget_s: float) -> str | None:
        """Stop on SIGTERM/SIGUSR1 (any rank: a scheduler's preemption notice) or rank 0's wall-clock budget.

        One MAX all-reduce per step, so every rank leaves the loop at the same step and checkpoints it."""
        over = self.rank == 0 and budget_s > 0 and time.time() - self.t_start > budget_s
        flags = torch.tensor([int(over), self.stop_signal or 0])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0] and self.rank == 0:
            log.info("wall-clock budget --max-minutes %s spent at step %d", self.cfg.run.max_minutes, self.step)
        if flags[1] and self.rank == 0:
            log.info(
                "stopping on signal %s at step %d: checkpointing, relaunch to resume",
                signal.Signals(int(flags[1])).name,
                self.step,
            )
        return "signal" if flags[1] else "budget" if flags[0] else None

    def train_step(self) -> dict:
        """One optimizer step over gas micro batches -> its metrics record."""
        t0 = time.time()
        lr = self.engine.get_lr()[0]
        skipped_before = self.engine.skipped_steps
        sums = torch.zeros(7, dtype=torch.float64)  # loss, mlm, cls, koleo, tokens, pairs, n_masked
        for _ in range(self.gas):
            sums += self._micro_step()
        dist.all_reduce(sums)
        self.step += 1
        skipped = self.engine.skipped_steps > skipped_before
        self.skipped_total += int(skipped)
        self.bad_in_row = self.bad_in_row + 1 if skipped else 0
        dt = time.time() - t0
        n = self.gas * self.world
        grad_norm = self.engine.get_global_grad_norm()
        return {
            "split": "train",
            "step": self.step,
            "epoch": self.sampler.state.epoch,
            "loss": sums[0].item() / n,
            "mlm_loss": sums[1].item() / n,
            "cls_loss": sums[2].item() / n,
            "koleo_loss": sums[3].item() / n,
            "lr": lr,
            "grad_norm": float("inf") if skipped or grad_norm is None else float(grad_norm),
            "tokens_per_s": sums[4].item() / dt,
            "pairs_per_s": sums[5].item() / dt,
            "tokens": int(sums[4]),
            "pairs": int(sums[5]),
            "n_masked": int(sums[6]),
            "skipped": skipped,
            "skipped_total": self.skipped_total,
            "time": time.time(),
            "elapsed_s": self.elapsed_before + time.time() - self.t_start,
        }

    def _micro_step(self) -> torch.Tensor:
        idx = self.sampler.next_batch()
        batch = self.collator(D.fetch_rows(self.train_ds, idx, self.cfg.data.max_length))
        batch = {k: v.to(self.engine.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        out = self.engine(**batch)
        loss = out["loss"]
        if torch.isfinite(loss):
            self.engine.backward(loss)
        else:  # NaN into every gradient: ZeRO's overflow check then skips the step on all ranks
            self.engine.backward(sum(p.sum() for p in self.engine.module.parameters()) * float("nan"))
        self.engine.step()
        parts = [out[k].detach().item() for k in ("loss", "mlm_loss", "cls_loss", "koleo_loss")]
        return torch.tensor(
            parts + [batch["input_ids"].numel(), batch["n_pairs"], int(out["n_masked"])], dtype=torch.float64
        )

    def validate(self) -> None:
        if self.validator is None:
            return
        result = self.validator.run(self.engine)
        if result is None:
            return
        result.update(
            split="valid", step=self.step, time=time.time(), elapsed_s=self.elapsed_before + time.time() - self.t_start
        )
        self.metrics.write(result)
        if self.rank == 0:
            log.info(
                "valid step %d | loss %.4f mlm %.4f cls %.4f koleo %.4f | mining acc src->trg %.3f trg->src %.3f",
                self.step,
                result["loss"],
                result["mlm_loss"],
                result["cls_loss"],
                result["koleo_loss"],
                result["acc_src2trg"],
                result["acc_trg2src"],
            )
