"""`Trainer`: one run's loop, composed of parts that each live in their own module.

- data: pipeline/data/train_data.py (checked dataset, sampler, masking collator, pair log), read, masked and packed
  ahead of the step in a background thread (pipeline/data/prefetch.py);
- model: pipeline/model/ (backends resolved once at start-up, pipeline/model/backends.py), wrapped by
  pipeline/training/engine.py;
- the step: pipeline/training/step.py (gas micro batches, non-finite losses skip the step, no host sync);
- the lr: a `Schedule` (pipeline/training/schedule.py) the trainer replaces when it is fitted, never edits;
- checkpoints, run records, the output lock, metrics, validation: pipeline/training/;
- in-training evaluation: hooks (pipeline/training/hooks.py) that pipeline/train.py passes in;
- elapsed time: pipeline/training/clock.py; stop signals and the wall-clock budget: pipeline/training/stop.py;
- processes and collectives: runtime/.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

import numpy as np
import torch
from deepspeed.accelerator import get_accelerator

from pipeline.config import ConfigError, TrainConfig, resolve_ds_config, write_run_files
from pipeline.config.ds_json import batch_record
from pipeline.config.schema import fit_refusal
from pipeline.data.prefetch import BatchStream, MicroBatch
from pipeline.data.train_data import TrainData
from pipeline.model.mexma import build_model
from pipeline.training import schedule as lr
from pipeline.training.backend_choice import choose_backends, timing_lengths
from pipeline.training.checkpoint import CheckpointManager, latest_batch_record
from pipeline.training.clock import RunClock
from pipeline.training.engine import build_engine, run_dtype
from pipeline.training.hooks import Hook, HookContext, HookFactory, budget
from pipeline.training.lock import take_output_lock
from pipeline.training.metrics import MetricsLogger, log
from pipeline.training.runrecord import RUN_FILES, check_relaunch_on_rank0, read_record, run_record, state_schedule
from pipeline.training.step import OptimizerStep
from pipeline.training.stop import StopRequests
from pipeline.training.validate import Validator
from runtime import collectives, devices, shared_dir
from runtime.rng import rng_state, set_rng_state


class TrainingStoppedError(RuntimeError):
    """The run cannot go on (too many non-finite steps); the message says why."""


class Trainer:
    """Data + engine + checkpoints + logging + hooks for one run (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, ds_config: dict, hooks: list[HookFactory] = ()):
        self.cfg, r = cfg, cfg.run
        self.rank, self.world = collectives.init_training(r.dist_timeout, r.verbose)
        self.out = Path(r.output_dir)
        shared_dir.check_shared_dir(self.out, error=ConfigError)  # rank 0 writes checkpoints, every node reads
        self.lock = take_output_lock(self.out, self.rank)  # before anything is written to --output-dir
        self._seed(r.seed)
        previous = latest_batch_record(self.out) if r.resume else None  # another world size: keep the batch
        self.ds_config = resolve_ds_config(cfg, ds_config, self.world, previous)
        gas, micro = self.ds_config["gradient_accumulation_steps"], self.ds_config["train_micro_batch_size_per_gpu"]
        self.data = TrainData(cfg, micro, gas, self.rank, self.world)
        self.validator = Validator.for_run(cfg, self.data, micro, self.rank, self.world)
        made = (make(cfg, self.data.specials, self.rank, self.world) for make in hooks)  # check their inputs now
        self.hooks: list[Hook] = [h for h in made if h is not None]
        upper = r.max_steps or max(1, int(r.epochs * len(self.data.sampler) / gas))
        # --fit-to-minutes: the lr holds at the warmup's start until the fit (pipeline/training/schedule.py)
        self.fit = lr.ScheduleFit(r.fit_after, 0) if r.fit_to_minutes else None
        if self.fit and upper <= r.fit_after:  # --epochs resolved to too few steps to fit
            raise ConfigError(fit_refusal(upper, r.fit_after) + f" (--epochs {r.epochs})")
        self.schedule = lr.Schedule(upper, hold=r.fit_after if self.fit else 0)
        model_cfg = dataclasses.replace(cfg.model, gradient_checkpointing=False)  # applied in build_engine only
        try:
            model = build_model(model_cfg, self.data.vocab_size, self.data.specials["pad"])
        except (ValueError, OSError) as e:  # a --model directory that does not fit the data, or cannot be read
            raise ConfigError(f"--model {cfg.model.model}: {e}") from e
        backends = self._select_backends(model)
        self.engine = build_engine(cfg, model, self.ds_config, self.schedule)
        batch = batch_record(self.ds_config, self.world)
        shares = self.data.sampler.pair_shares()
        fields = {k: v for h in self.hooks for k, v in h.record.items()}
        self.record = run_record(cfg, upper, self.data.manifest, self.world, fields, batch=batch, pair_shares=shares,
                                 backends=backends)  # fmt: skip
        torch.manual_seed(r.seed + 1 + self.rank)  # dropout: same init everywhere, distinct masks per rank
        self.data.make_collator(seed=r.seed + self.rank)
        self.ckpt = CheckpointManager(self.out, keep=r.keep_checkpoints, rank=self.rank)
        self.metrics: MetricsLogger | None = None  # started by resume(), after the relaunch checks (wandb id)
        self.steps = OptimizerStep(self.engine, gas, self.world)
        self.clock = RunClock()
        self.stops = StopRequests(self.clock, r.max_minutes, self.rank)
        self.batches: BatchStream | None = None  # started by the first step (after resume)

    @property
    def step(self) -> int:
        return self.steps.step

    def _select_backends(self, model) -> dict:
        """attention="auto" and the fused KoLeo: rank 0 checks and times them on this device and dtype with a micro
        batch of random pairs, every rank adopts its choice (pipeline/training/backend_choice.py); the report goes
        to the log and config.json's "resolved"."""
        device = devices.select_device(get_accelerator().device_name())  # this rank's, as init_training chose
        s = self.data.sampler
        lengths = timing_lengths(s.lengths, s.max_length, s.batch_pairs, s.batch_tokens, self.cfg.run.seed)
        report = choose_backends(model, device, run_dtype(self.ds_config), lengths, self.rank)
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

    # -- state ---------------------------------------------------------------------------------------------------
    def client_state(self) -> dict:
        self._settle()  # the sampler / masking state of the batches consumed, not prefetched; metrics written
        return {
            **self.steps.state_dict(),
            **self.data.state_dict(),
            "rng": rng_state(),
            "elapsed_s": self.clock.elapsed(),
            "run_record": self.record,  # also saved as run_record.json: what a relaunch is compared with
        }

    def resume(self) -> None:
        """Relaunch rules (pipeline/training/runrecord.py): every refusal comes before anything on disk changes;
        then the checkpoint is loaded, the optimizer and schedule set from this config, and rank 0 writes the run
        records."""
        r = self.cfg.run
        if not r.resume:
            self.ckpt.set_aside(also=RUN_FILES)
        tag = self.ckpt.find_resume() if r.resume else None
        if tag is not None:
            fitted = (read_record(self.ckpt.root / tag) or {}).get("schedule")
            if fitted:  # keep the fit's hold (the lr history), and with --fit-to-minutes its length (no second fit)
                self._use_schedule(lr.Schedule.from_fit(fitted, None if r.fit_to_minutes else self.schedule.length))
            check_relaunch_on_rank0(self.ckpt.root / tag, self.record, r.allow_config_change, self.rank)
            self._load(tag)
        if self.rank == 0:
            write_run_files(self.record, self.ds_config, self.out, Path(self.cfg.data.path) / "tokenizer")
        self.metrics = MetricsLogger(self.out, self.rank, r.wandb, r.wandb_project, r.run_name, self.record["config"],
                                     r.log_every)  # fmt: skip
        self.metrics.truncate_after(self.step)
        if tag is not None:
            epoch = self.data.sampler.state.epoch
            log.info("resumed from %s (step %d, epoch %d)", self.ckpt.root / tag, self.step, epoch)

    def _load(self, tag: str) -> None:
        state = self.ckpt.load(self.engine, tag, trust=self.cfg.run.trust_checkpoint)
        self.steps.load_state_dict(state)
        self.clock.resume_from(state.get("elapsed_s", 0.0))
        self.data.load_state_dict(state)
        set_rng_state(state["rng"])
        if self.fit is not None:  # not fitted yet: time this launch's first steps, hold the lr until then
            self.fit = lr.ScheduleFit(self.cfg.run.fit_after, self.step)
            self.schedule = lr.Schedule(self.schedule.length, hold=self.steps.applied + self.cfg.run.fit_after)
        self.schedule.apply(self.engine, self.cfg, self.steps.applied)

    def _use_schedule(self, schedule: lr.Schedule) -> None:
        """Adopt a fitted schedule and state it in the run record; no further fit when it brings its length, but the
        one refit of a fit made in this launch (pipeline/training/schedule.py)."""
        self.schedule = schedule
        if schedule.fitted_length and not (self.fit is not None and self.fit.refit_pending):
            self.fit = None
        state_schedule(self.record, schedule)

    def _fit_schedule(self, record: dict) -> None:
        """--fit-to-minutes, once its steps are timed: rank 0 sizes the schedule, every rank adopts it."""
        if self.fit is None or not self.fit.observe(self.step, record["tokens"]):
            return
        entry, (every, tokens) = None, budget(self.hooks)
        if self.rank == 0:
            budget_s, upper = self.cfg.run.max_minutes * 60, self.schedule.length
            entry = self.fit.decide(step=self.step, applied=self.steps.applied, upper=upper, budget_s=budget_s,
                                    spent_s=self.clock.launch(), world=self.world, xsim_every=every,
                                    xsim_tokens=tokens)  # fmt: skip
        entry = collectives.broadcast_object(entry)
        self.fit.adopt(entry)  # every rank: the refit, a broadcast too, comes due at the same step everywhere
        self._use_schedule(lr.Schedule.from_fit(entry))
        self.schedule.apply(self.engine, self.cfg, self.steps.applied)
        self.metrics.write({"split": "schedule", "step": self.step, "time": time.time(), **entry})
        if self.rank == 0:
            write_run_files(self.record, self.ds_config, self.out)  # config.json states the fitted length
            log.info("%s", lr.describe(entry, self.step))

    # -- the loop ------------------------------------------------------------------------------------------------
    def train(self) -> int:
        """Run to the schedule's length (or the wall-clock budget, or a stop signal); returns the last step.
        Checkpoints at the end; validates and runs the hooks' at_end unless stopped by a signal (preemption: save
        first, fast; pipeline/training/stop.py)."""
        self.clock.start()
        self.stops.install()
        self.resume()
        if self.step >= self.schedule.length:
            log.info("%s already holds a finished run (step %d of %d); --no-resume starts over", self.out, self.step,
                     self.schedule.length)  # fmt: skip
            return self.step
        stop = None
        while self.step < self.schedule.length and stop is None:
            record = self.train_step()
            self._after_step(record)
            self._fit_schedule(record)
            stop = self.stops.poll(self.step)
        every = self.cfg.run.valid_every
        if stop != "signal" and (every == 0 or (every > 0 and self.step % every)):
            self.validate()
        for hook in self.hooks if stop != "signal" else ():
            hook.at_end(self._context())  # e.g. scores the last step unless the cadence just did
        self.ckpt.save(self.engine, self.step, self.client_state())
        self.metrics.close()
        return self.step

    def train_step(self) -> dict:
        """One optimizer step (pipeline/training/step.py) -> its metrics record."""
        metrics = self.steps(self._next_batch)
        epoch = self.batches.epoch
        return {"split": "train", "step": self.step, "epoch": epoch, **metrics, "elapsed_s": self.clock.elapsed()}

    def _after_step(self, record: dict) -> None:
        """Log, stop on too many bad steps, validate and checkpoint on their cadence, then the hooks."""
        r = self.cfg.run
        if self.step % r.log_every == 0:  # as of the consumed batches: the prefetch thread runs ahead
            consumed = self.batches.consumed[0] if self.batches is not None else None
            record["pair_counts"] = self.data.pairs.since_last(consumed)
        self.metrics.write(record)
        self.metrics.progress(record, self.schedule.length)
        if self.steps.bad_in_row >= r.max_bad_steps:
            raise TrainingStoppedError(
                f"{self.steps.bad_in_row} optimizer steps in a row had a non-finite loss (limit --max-bad-steps "
                f"{r.max_bad_steps}) at step {self.step}; lower --lr or check the data. The last complete checkpoint "
                "is kept"
            )
        if r.valid_every > 0 and self.step % r.valid_every == 0:
            self.validate()
        if r.save_every and self.step % r.save_every == 0:
            self.ckpt.save(self.engine, self.step, self.client_state())
        for hook in self.hooks:
            hook.after_step(self._context())

    def _context(self) -> HookContext:
        """What a hook may use of this run (pipeline/training/hooks.py)."""

        def save_best(score: float, metric: str, fingerprint: str = "") -> str:
            tag = self.ckpt.save(self.engine, self.step, self.client_state())
            self.ckpt.mark_best(tag, self.step, score, metric, fingerprint=fingerprint)
            return tag

        best = lambda: self.ckpt.best() if self.rank == 0 else None  # noqa: E731
        return HookContext(self.step, self.engine.module, self.engine.device, self.metrics.write, best, save_best,
                           self.clock.elapsed)  # fmt: skip

    def _settle(self) -> None:
        """Before a checkpoint: stop the prefetch thread, rewinding sampler and collator to the batches consumed,
        and write the buffered metrics records (metrics.jsonl then holds every step up to the checkpoint)."""
        if self.batches is not None:
            self.batches.close()
            self.batches = None
        if self.metrics is not None:
            self.metrics.flush()

    def _next_batch(self) -> MicroBatch:
        """The next micro batch, read, masked and packed --prefetch batches ahead (pinned on CUDA)."""
        if self.batches is None:
            d = self.data
            pin = self.engine.device.type == "cuda"
            self.batches = BatchStream(d.sampler, d.collator, d.read_rows, depth=self.cfg.data.prefetch, pin=pin)
        return self.batches.next()

    def validate(self) -> None:
        result = self.validator.run(self.engine) if self.validator is not None else None
        if result is None:
            return
        result.update(split="valid", step=self.step, time=time.time(), elapsed_s=self.clock.elapsed())
        self.metrics.write(result)
        if self.rank == 0:
            r = result
            log.info(
                "valid step %d | loss %.4f mlm %.4f cls %.4f koleo %.4f | mining acc src->trg %.3f trg->src %.3f",
                *(self.step, r["loss"], r["mlm_loss"], r["cls_loss"], r["koleo_loss"], r["acc_src2trg"]),
                r["acc_trg2src"],
            )
