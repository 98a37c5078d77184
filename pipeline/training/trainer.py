"""The one place that wraps the single-device model: activation checkpointing + `deepspeed.initialize`.

`Trainer` owns the run: data, engine, checkpoints, the step loop. One optimizer step = `gradient_accumulation_steps`
micro batches per rank; DeepSpeed averages gradients over micro batches and ranks, clips (gradient_clipping) and
steps AdamW, then our LambdaLR schedule (linear warmup from lr x warmup_start_factor to lr over
round(warmup_fraction x max_steps) steps, then cosine to lr x min_lr_ratio: torchvision's LinearLR + CosineAnnealingLR
as the reference used; DeepSpeed's WarmupCosineLR would spend the first step at lr 0).

Non-finite loss: a micro batch whose loss is NaN/inf back-propagates NaN into one parameter's gradient instead (chosen
on the device with torch.where: no host sync), so DeepSpeed's ZeRO overflow check (any non-finite gradient, MAX over
ranks) skips the whole optimizer step and clears the gradients; the lr schedule does not advance. After
--max-bad-steps skipped steps in a row the run stops.

No host synchronisation inside a step (docs/training.md, "The GPU path"): the next micro batch is read, masked and
packed in a background thread (pipeline/data/prefetch.py), the step's metrics stay on the device and metrics.jsonl gets
them once per --log-every steps; processes, devices and collectives live in runtime/collectives.py.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import time
from pathlib import Path

import deepspeed
import numpy as np
import torch
from deepspeed.accelerator import get_accelerator

from pipeline.config import ConfigError, TrainConfig, resolve_ds_config, write_run_files
from pipeline.config.ds_json import batch_record
from pipeline.config.schema import fit_refusal
from pipeline.data import dataset as D
from pipeline.data.collate import MexmaCollator
from pipeline.data.prefetch import BatchStream, MicroBatch
from pipeline.data.sampler import make_train_sampler
from pipeline.model.mexma import build_model
from pipeline.training.backend_choice import choose_backends, timing_lengths
from pipeline.training.checkpoint import CheckpointManager, latest_batch_record
from pipeline.training.lock import take_output_lock
from pipeline.training.metrics import MetricsLogger, log
from pipeline.training.runrecord import RUN_FILES, check_relaunch_on_rank0, manifest_sha256, read_record, run_record
from pipeline.training.schedule import ScheduleFit, WarmupCosine, apply_optim_config, param_groups
from pipeline.training.validate import Validator
from runtime import collectives, devices, shared_dir, sync_debug
from runtime.rng import rng_state, set_rng_state

LOSS_KEYS = ("loss", "mlm_loss", "cls_loss", "koleo_loss")
SYNC_DEBUG_AFTER = 3  # MEXMA_SYNC_DEBUG counts from this step on (the first steps allocate, compile, warm up)


class TrainingStoppedError(RuntimeError):
    """The run cannot go on (too many non-finite steps); the message says why."""


def build_engine(cfg: TrainConfig, model: torch.nn.Module, ds_config: dict, max_steps: int, hold: int = 0):
    """Activation checkpointing (if asked) + deepspeed.initialize with our LR schedule -> engine."""
    if cfg.model.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    o = cfg.optim
    schedule = WarmupCosine(max_steps, o.warmup_fraction, o.warmup_start_factor, o.min_lr_ratio, hold)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, o.weight_decay),
        config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
    )
    return engine


class Trainer:
    """Data + engine + checkpoints + logging for one run (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, ds_config: dict, make_xsim_hook=None):
        self.cfg = cfg
        self.rank, self.world = collectives.init_training(cfg.run.dist_timeout, cfg.run.verbose)
        self.out = Path(cfg.run.output_dir)
        shared_dir.check_shared_dir(self.out, error=ConfigError)  # rank 0 writes checkpoints, every node reads
        self.lock = take_output_lock(self.out, self.rank)  # before anything is written to --output-dir
        self._seed(cfg.run.seed)
        previous = latest_batch_record(self.out) if cfg.run.resume else None  # another world size: keep the batch
        self.ds_config = resolve_ds_config(cfg, ds_config, self.world, previous)
        self.gas = self.ds_config["gradient_accumulation_steps"]
        self._load_data()
        # in-training evaluation (eval/train_hook.py, wired in by pipeline/train.py): checks --xsim-data now
        self.xsim = make_xsim_hook(cfg, self.specials, self.rank, self.world) if make_xsim_hook else None
        self.max_steps = cfg.run.max_steps or max(1, int(cfg.run.epochs * len(self.sampler) / self.gas))
        # --fit-to-minutes: the lr holds at the warmup's start until the fit (pipeline/training/schedule.py)
        self.fit = ScheduleFit(cfg.run.fit_after, 0) if cfg.run.fit_to_minutes else None
        self.hold = cfg.run.fit_after if self.fit else 0
        if self.fit and self.max_steps <= cfg.run.fit_after:  # --epochs resolved to too few steps to fit
            raise ConfigError(fit_refusal(self.max_steps, cfg.run.fit_after) + f" (--epochs {cfg.run.epochs})")
        model_cfg = dataclasses.replace(cfg.model, gradient_checkpointing=False)  # applied in build_engine only
        try:
            model = build_model(model_cfg, self.vocab_size, self.specials["pad"])
        except (ValueError, OSError) as e:  # a --model directory that does not fit the data, or cannot be read
            raise ConfigError(f"--model {cfg.model.model}: {e}") from e
        backends = self._select_backends(model)
        self.engine = build_engine(cfg, model, self.ds_config, self.max_steps, self.hold)
        xsim_sha256 = self.xsim.evaluator.fingerprint if self.xsim is not None else ""
        self.record = run_record(
            cfg, self.max_steps, self.manifest, manifest_sha256(cfg.data.path), self.world, xsim_sha256
        )
        self.record["batch"] = batch_record(self.ds_config, self.world)  # read back by a relaunch on another W
        self.record["pair_shares"] = self.sampler.pair_shares()  # target share of each language pair
        self.record["resolved"] = {"backends": backends, "pair_shares": self.record["pair_shares"]}  # -> config.json
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
        self.batches: BatchStream | None = None  # started by the first train_step (after resume)
        self._poison: torch.nn.Parameter | None = None  # gets NaN gradients on a non-finite loss

    def _select_backends(self, model) -> dict:
        """attention="auto" and the fused KoLeo: rank 0 checks and times them on this device and dtype with a micro
        batch of random pairs, every rank adopts its choice (pipeline/training/backend_choice.py); the report goes
        to the log and config.json's "resolved"."""
        device = devices.select_device(get_accelerator().device_name())  # this rank's, as init_training chose
        dtype = torch.bfloat16 if self.ds_config.get("bf16", {}).get("enabled") else torch.float32
        dtype = torch.float16 if self.ds_config.get("fp16", {}).get("enabled") else dtype
        s = self.sampler
        lengths = timing_lengths(s.lengths, s.max_length, s.batch_pairs, s.batch_tokens, self.cfg.run.seed)
        report = choose_backends(model, device, dtype, lengths, self.rank)
        if self.rank == 0:
            for stack, r in report.items():
                if stack != "timing_batch":
                    log.info("backend %s: %s (%s)", stack, r.get("backend"), r.get("reason", ""))
        return report

    def _seed(self, seed: int) -> None:
        """Same init on every rank (seed), different dropout streams per rank afterwards (seed + rank)."""
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _verify_on_rank0(self) -> None:
        """Local rank 0 of every node checks the shards that node reads (--data may be a node-local copy); every
        rank raises the first failure, none waits forever."""
        c = self.cfg.data
        collectives.on_each_node(lambda: D.verify_shards(c.path, self.manifest, c.verify), (D.DataError,))

    def _load_data(self) -> None:
        c = self.cfg.data
        self.manifest = D.load_manifest(c.path)
        self._verify_on_rank0()
        self.specials = D.special_ids(self.manifest)
        self.vocab_size = int(self.manifest["tokenizer"]["vocab_size"])
        self.train_ds = D.load_split(c.path, "train", self.manifest)
        micro = self.ds_config["train_micro_batch_size_per_gpu"]
        self.sampler = make_train_sampler(self.cfg, self.manifest, micro, self.gas, self.rank, self.world)
        self._pairs_logged: dict[str, int] = {}  # cumulative rows per pair at the last metrics record
        self.validator = self._make_validator(micro)

    def _pair_counts_since_log(self) -> dict[str, int]:
        """Rows per language pair of the steps since the last record, from the consumed batch's sampler state (the
        prefetch thread runs ahead of the steps)."""
        state = self.batches.consumed[0] if self.batches is not None else self.sampler.state_dict()
        total, last = self.sampler.pair_counts(state), self._pairs_logged
        self._pairs_logged = total
        return {k: v - last.get(k, 0) for k, v in total.items() if v != last.get(k, 0)}

    def _read_rows(self, idx) -> list[dict]:
        """Rows of the micro batch the sampler just returned. Its masking is keyed by the batch's place in the global
        plan (seed, epoch, global micro batch), not by this rank's stream, so that a relaunch on another number of
        ranks masks the same rows the same way (BatchStream calls this right before the collator)."""
        self.collator.generator.manual_seed(self.sampler.batch_seed())
        return D.fetch_rows(self.train_ds, idx, self.cfg.data.max_length)

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
        self._settle()  # the sampler / masking state of the batches consumed, not prefetched; metrics written
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
        """Relaunch rules (pipeline/training/runrecord.py): every refusal comes before anything on disk changes;
        then the checkpoint is loaded, the optimizer and schedule set from this config, and rank 0 writes the run
        records."""
        if not self.cfg.run.resume:
            self.ckpt.set_aside(also=RUN_FILES)
        tag = self.ckpt.find_resume() if self.cfg.run.resume else None
        if tag is not None:
            self._adopt_schedule(read_record(self.ckpt.root / tag))
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
        state = self.ckpt.load(self.engine, tag, trust=self.cfg.run.trust_checkpoint)
        self.step, self.skipped_total, self.bad_in_row = state["step"], state["skipped_total"], state["bad_in_row"]
        self.elapsed_before = state.get("elapsed_s", 0.0)
        self.sampler.load_state_dict(state["sampler"])
        self._pairs_logged = self.sampler.pair_counts()  # metrics count pairs from the resumed step on
        self.collator.load_state_dict(state["collator"])
        set_rng_state(state["rng"])
        if self.fit is not None:  # not fitted yet: time this launch's first steps, hold the lr until then
            self.fit = ScheduleFit(self.cfg.run.fit_after, self.step)
            self.hold = self.step - self.skipped_total + self.cfg.run.fit_after
        apply_optim_config(self.engine, self.cfg, self.max_steps, self.step - self.skipped_total, self.hold)

    def _adopt_schedule(self, old: dict | None) -> None:
        """A checkpoint whose run fitted its schedule: keep its hold (the lr history), and with --fit-to-minutes its
        length too (no second fit). Without the flag the length is --max-steps', which the relaunch rules judge."""
        schedule = (old or {}).get("schedule")
        if schedule:
            self._use_schedule(schedule, length=self.cfg.run.fit_to_minutes)

    def _use_schedule(self, schedule: dict, length: bool = True) -> None:
        """Adopt a fitted schedule entry: its hold, its length (unless length=False), and the records that state it.
        No further fit after that, but the one refit of a fit made in this launch (pipeline/schedule_fit.py)."""
        self.hold = schedule["hold"]
        if length:
            self.max_steps = self.record["max_steps"] = schedule["max_steps"]
            self.record["config"]["run"]["max_steps"] = self.max_steps
            self.fit = self.fit if self.fit is not None and self.fit.refit_pending else None
        self.record["schedule"] = self.record["resolved"]["schedule"] = schedule

    def _fit_schedule(self, record: dict) -> None:
        """--fit-to-minutes, once its steps are timed: rank 0 sizes the schedule, every rank adopts it."""
        if self.fit is None or not self.fit.observe(self.step, record["tokens"]):
            return
        schedule = None
        if self.rank == 0:
            schedule = self.fit.decide(
                step=self.step,
                applied=self.step - self.skipped_total,
                upper=self.max_steps,
                budget_s=self.cfg.run.max_minutes * 60,
                spent_s=time.time() - self.t_start,
                world=self.world,
                xsim_every=self.cfg.run.xsim_every,
                xsim_tokens=self.xsim.evaluator.tokens if self.xsim is not None else 0,
            )
        schedule = collectives.broadcast_object(schedule)
        self._use_schedule(schedule)
        apply_optim_config(self.engine, self.cfg, self.max_steps, self.step - self.skipped_total, self.hold)
        self.metrics.write({"split": "schedule", "step": self.step, "time": time.time(), **schedule})
        if self.rank == 0:
            write_run_files(self.record, self.ds_config, self.out)  # config.json states the fitted length
            log.info(
                "--fit-to-minutes: %.3f s/step over the %d steps before step %d, %.0f s of %.0f left (reserve %.0f "
                "s, %d xsim evaluations at ~%.1f s): schedule %d steps (upper bound %d), warmup + cosine from step %d",
                schedule["s_per_step"],
                schedule["timed_steps"],
                self.step,
                schedule["budget_s"] - schedule["spent_s"],
                schedule["budget_s"],
                schedule["reserve_s"],
                schedule["xsim_evaluations"],
                schedule["xsim_s_estimate"],
                self.max_steps,
                schedule["upper_bound"],
                schedule["hold"],
            )

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
            record = self.train_step()
            self._after_step(record)
            self._fit_schedule(record)
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
        if self.step % self.cfg.run.log_every == 0:
            record["pair_counts"] = self._pair_counts_since_log()
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

        One MAX all-reduce of host integers per step (gloo: no device sync), so every rank leaves the loop at the
        same step and checkpoints it."""
        over = self.rank == 0 and budget_s > 0 and time.time() - self.t_start > budget_s
        over, signum = collectives.max_flags([int(over), self.stop_signal or 0])
        if over and self.rank == 0:
            log.info("wall-clock budget --max-minutes %s spent at step %d", self.cfg.run.max_minutes, self.step)
        if signum and self.rank == 0:
            log.info(
                "stopping on signal %s at step %d: checkpointing, relaunch to resume",
                signal.Signals(signum).name,
                self.step,
            )
        return "signal" if signum else "budget" if over else None

    def _settle(self) -> None:
        """Before a checkpoint: stop the prefetch thread, rewinding sampler and collator to the batches consumed,
        and write the buffered metrics records (metrics.jsonl then holds every step up to the checkpoint)."""
        if self.batches is not None:
            self.batches.close()
            self.batches = None
        if self.metrics is not None:
            self.metrics.flush()

    def train_step(self) -> dict:
        """One optimizer step over gas micro batches -> its metrics record; loss sums stay 0-d device tensors that
        MetricsLogger reads once per --log-every steps. MEXMA_SYNC_DEBUG=1 (CUDA) adds syncs_per_step after
        SYNC_DEBUG_AFTER steps."""
        debug = os.environ.get("MEXMA_SYNC_DEBUG") == "1" and self.step >= SYNC_DEBUG_AFTER
        with sync_debug.count_syncs(debug) as syncs:
            record = self._optimizer_step()
        if syncs[0] is not None:
            record["syncs_per_step"] = syncs[0]
        return record

    def _optimizer_step(self) -> dict:
        t0 = time.time()
        lr = self.engine.get_lr()[0]
        # A host int. DeepSpeed's own syncs: with overlap_comm ZeRO-2 synchronises the device at the end of every
        # micro step's backward (the reduction stream's buckets are reused), then reads the overflow flag and the
        # gradient norm at the optimizer step: about gradient_accumulation_steps + 2 per step (gpu_check reports it).
        skipped_before = self.engine.skipped_steps
        sums = 0
        for _ in range(self.gas):
            sums = sums + self._micro_step(self._next_batch())  # (7,) float64 on the device
        collectives.all_reduce(sums)
        self.step += 1
        skipped = self.engine.skipped_steps > skipped_before
        self.skipped_total += int(skipped)
        self.bad_in_row = self.bad_in_row + 1 if skipped else 0
        dt = time.time() - t0  # host time: DeepSpeed's overflow check has waited for the device
        n = self.gas * self.world
        grad_norm = self.engine.get_global_grad_norm()
        if skipped or grad_norm is None:
            grad_norm = float("inf")
        return {
            "split": "train",
            "step": self.step,
            "epoch": self.batches.epoch,
            "loss": sums[0] / n,
            "mlm_loss": sums[1] / n,
            "cls_loss": sums[2] / n,
            "koleo_loss": sums[3] / n,
            "lr": lr,
            "grad_norm": grad_norm if isinstance(grad_norm, torch.Tensor) else float(grad_norm),
            "tokens_per_s": sums[4] / dt,
            "pairs_per_s": sums[5] / dt,
            "tokens": sums[4],
            "pairs": sums[5],
            "n_masked": sums[6],
            "skipped": skipped,
            "skipped_total": self.skipped_total,
            "time": time.time(),
            "elapsed_s": self.elapsed_before + time.time() - self.t_start,
        }

    def _next_batch(self) -> MicroBatch:
        """The next micro batch, read, masked and packed --prefetch batches ahead (pinned on CUDA)."""
        if self.batches is None:
            c = self.cfg.data
            self.batches = BatchStream(
                self.sampler,
                self.collator,
                self._read_rows,
                depth=c.prefetch,
                pin=self.engine.device.type == "cuda",
            )
        return self.batches.next()

    def _micro_step(self, mb: MicroBatch) -> torch.Tensor:
        """Forward, backward, DeepSpeed step -> (7,) float64 on the device: loss, mlm, cls, koleo, tokens, pairs,
        n_masked. No .item() / int() / bool() of a tensor (tests/pipeline/test_prefetch.py counts them)."""
        device = self.engine.device
        out = self.engine(**devices.to_device(mb.batch, device))
        self.engine.backward(self._finite_or_poison(out["loss"]))
        self.engine.step()
        losses = torch.stack([out[k].detach().reshape(()).double() for k in LOSS_KEYS])  # (4,)
        n_masked = torch.as_tensor(out["n_masked"], dtype=torch.float64, device=device).reshape(1)
        return torch.cat([losses, mb.counts.to(device, non_blocking=True), n_masked])

    def _finite_or_poison(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss where finite; else 0 plus NaN x (the smallest parameter's sum), so that parameter's gradient is
        NaN and ZeRO's overflow check skips the step on every rank. Chosen on the device: no host sync."""
        if self._poison is None:
            self._poison = min((p for p in self.engine.module.parameters() if p.requires_grad), key=torch.numel)
        finite = torch.isfinite(loss)
        nan_if_bad = torch.where(finite, 0.0, float("nan"))
        return torch.where(finite, loss, 0.0) + self._poison.sum() * nan_if_bad

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
