"""xsim / xsim++ inside the run (`--xsim-every N --xsim-data DIR`) and the `best` checkpoint it keeps.

The code of `python -m eval`, with the live weights instead of an export:
- inputs: `eval.data.load_flores` (every check of `python -m eval`, at start-up, before any training step), the
  sentences tokenised once with the run's tokenizer (`DATA/tokenizer`, the one train.py copies to OUTPUT) at the
  run's --max-length (`eval.encode.tokenize`);
- encoding: `eval.encode.encode_ids` (length-sorted batches, input order restored) over the model's own packed
  encoder call (`MexmaModel.encode_packed`, the training forward's first half; the CLS state is the embedding), in
  eval mode under `torch.no_grad()`, in the weights' dtype (bf16 for a bf16 ZeRO run, fp32 on the CPU). Every rank
  encodes its share of the sentence sets (`eval.shares.plan`), rank 0 gathers and scores (`eval.score.score_sets`:
  ratio margin, k = 4, text comparison, as `python -m eval`'s defaults) and broadcasts the record, so every rank
  takes the same decisions;
- the python / numpy / torch / CUDA RNG states are saved before and restored after, and the model's train/eval mode
  is restored: a run with --xsim-every has the same losses as one without (tests/pipeline/test_xsim_train.py).

Best checkpoint (`EvalHook`, shared with the mining hook of eval/mine_hook.py; --best-metric says which hook keeps
it, the other only records): when the pooled xsim error (the split's X -> target average; xsim++ is recorded, not
ranked) is strictly below the best so far, the step's checkpoint is saved right away (no-op when --save-every saved
it already) and marked `best` (checkpoints/best + best.json, `CheckpointManager.mark_best`); pruning never removes
it. The best-so-far comes from best.json, so a resumed run keeps it and --no-resume (which sets checkpoints/ aside)
starts a new one. Scores are compared only within one test set and metric: best.json holds the metric and the test
set's content fingerprint (`XsimEvaluator.fingerprint`: sha256 of the split, target, set names and every line), and
an evaluation on another test set (another --xsim-data, or the same path with edited files) or with another metric
starts a new `best` lineage, said at WARNING. The fingerprint is also in the run record, so such a relaunch needs
--allow-config-change.
`python -m pipeline.export RUN OUT --tag best` exports it.

The hook reads the live model from its `HookContext`: the engine's module, whole on every rank under ZeRO stages 0-2.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from eval import shares
from eval.data import DataError, load_flores
from eval.encode import encode_ids, tokenize
from eval.score import Scorer, score_sets
from pipeline.config import ConfigError
from pipeline.data.collate import IGNORE_INDEX, pack
from pipeline.training.hooks import Hook, HookContext
from pipeline.training.metrics import log
from runtime import collectives, rng

METRIC = "xsim_error_pct"  # pooled X -> target xsim error %, the `best` criterion
BATCH_TOKENS = 8192  # padded tokens per encoder batch (python -m eval's --batch-tokens default)
# The flags of the test set inside training, named in eval.data's messages instead of python -m eval's.
TRAINING_FLAGS = {"root": "--xsim-data", "split": "--xsim-split", "langs": "--xsim-langs", "target": "--xsim-target"}


@contextmanager
def preserved_rng():
    """Restore the python, numpy, torch and CUDA RNG states on exit (evaluation draws nothing, but must not)."""
    state = rng.rng_state()
    try:
        yield
    finally:
        rng.set_rng_state(state)


def load_tokenizer(data_dir: str | Path, flag: str = "--xsim-every"):
    path = Path(data_dir) / "tokenizer"
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ConfigError(f"{flag}: no tokenizer in {path} (data_prep writes it there)")
    from runtime.received import RemoteCodeError
    from runtime.received import load_tokenizer as load_received

    try:
        return load_received(path, "--data")
    except RemoteCodeError as e:
        raise ConfigError(str(e)) from e


def test_set_fingerprint(split: str, target: str, texts: dict[str, list[str]], aug) -> str:
    """sha256 of what an evaluation scores: split, target, each set's name and lines, the xsim++ error types."""
    h = hashlib.sha256(json.dumps([split, target, sorted(texts)]).encode())
    for name in sorted(texts):
        h.update(json.dumps([name, texts[name]], ensure_ascii=False).encode())
    if aug is not None:
        h.update(json.dumps(aug.errtypes, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


class LiveEncoder:
    """Sentence sets tokenised once at start-up; `encode_share` encodes this rank's share with the live model and
    `run` scores it. A subclass names its cadence flag (`every`: the run config attribute, `xsim_every`) and the
    record's timing field, tokenises its sets in `__init__` through `_plan`, and scores on rank 0 in `_score`."""

    every, seconds = "", ""

    @classmethod
    def for_run(cls, cfg, specials: dict, rank: int, world: int):
        """None when the cadence flag is off; else the evaluator, or ConfigError naming the flag / file at fault."""
        if getattr(cfg.run, cls.every) <= 0:
            return None
        tokenizer = load_tokenizer(cfg.data.path, "--" + cls.every.replace("_", "-"))
        return cls(cfg.run, tokenizer, cfg.data.max_length, specials["pad"], rank, world)

    def run(self, model, device) -> dict:
        """Encode (every rank its share), score on rank 0 -> the same record on every rank (collective)."""
        start = time.perf_counter()
        emb = shares.gather(self.encode_share(model, device))
        record = None
        if self.rank == 0:
            record = self._score(emb, torch.device(device))
            record[self.seconds] = round(time.perf_counter() - start, 3)
        return collectives.broadcast_object(record)

    def _score(self, emb: dict[str, np.ndarray], device: torch.device) -> dict:
        raise NotImplementedError

    def _plan(self, texts: dict[str, list[str]], tokenizer, max_length: int, pad_id: int, rank: int, world: int):
        sizes = {name: sum(map(len, lines)) for name, lines in texts.items()}
        self.share = shares.plan(sizes, world)[rank]  # this rank's sentence sets, the same plan on every rank
        self.ids = {name: tokenize(tokenizer, texts[name], max_length) for name in self.share}
        self.tokens = sum(len(row) for rows in self.ids.values() for row in rows)  # encoded per evaluation
        self.rank, self.pad_id = rank, pad_id

    def _embed_fn(self, model, device):
        def embed(rows: list[list[int]]) -> torch.Tensor:
            seqs = [torch.tensor(r, dtype=torch.long) for r in rows]
            b = pack(seqs, [torch.full_like(s, IGNORE_INDEX) for s in seqs], n_pairs=0, pad_id=self.pad_id)
            cu = b["cu_seqlens"].to(device)
            ids, pos = b["input_ids"].to(device), b["position_ids"].to(device)
            return model.encode_packed(ids, pos, cu, b["max_seqlen"], cls_only=True)  # (B, H): each <s> state

        return embed

    def encode_share(self, model, device) -> dict[str, np.ndarray]:
        """This rank's sentence sets -> {name: (n, H) float32}, eval mode, no grad, RNG and mode restored."""
        was_training = model.training
        dim = model.encoder.config.hidden_size
        embed = self._embed_fn(model, device)
        with preserved_rng(), torch.no_grad():
            model.eval()
            try:
                return {name: encode_ids(self.ids[name], embed, dim, BATCH_TOKENS) for name in self.share}
            finally:
                model.train(was_training)


class XsimEvaluator(LiveEncoder):
    """The test set of one run, checked and tokenised at start-up; `run(model, device)` scores the live model."""

    every, seconds = "xsim_every", "xsim_s"

    def __init__(self, run_cfg, tokenizer, max_length: int, pad_id: int, rank: int = 0, world: int = 1):
        self.split, self.target = run_cfg.xsim_split, run_cfg.xsim_target
        try:
            self.langs, texts, self.aug = load_flores(
                run_cfg.xsim_data, run_cfg.xsim_split, run_cfg.xsim_langs, run_cfg.xsim_target, flags=TRAINING_FLAGS
            )
        except DataError as e:  # a bad --xsim-* value or test-set file: refused like any bad flag (exit 2)
            raise ConfigError(str(e)) from e
        n = len(texts[self.target])
        if n < Scorer().k:
            raise ConfigError(f"--xsim-data {run_cfg.xsim_data}: {n} sentences per language, the margin needs >= 4")
        self.texts = texts
        self.fingerprint = test_set_fingerprint(run_cfg.xsim_split, self.target, texts, self.aug)
        self._plan(texts, tokenizer, max_length, pad_id, rank, world)

    def _score(self, emb: dict[str, np.ndarray], device: torch.device) -> dict:
        scorer = Scorer(device=device)  # rank 0's device; numpy's sgemm on the CPU (faiss's bits)
        return self._record(score_sets(scorer, emb, self.texts, self.langs, self.target, self.aug))

    def _record(self, results: dict) -> dict:
        """Flat numbers for metrics.jsonl and wandb: pooled and per-language error %, xsim++ when present."""
        record = {"split": "xsim", "xsim_split": self.split, "target": self.target, "languages": len(self.langs)}
        record.update({METRIC: results["average"]["error_pct"], "errors": results["average"]["errors"]})
        record["n"] = results["average"]["n"]
        record.update({f"{METRIC}/{lang}": e["error_pct"] for lang, e in results["languages"].items()})
        if "xsimpp" in results:
            pp = results["xsimpp"]
            record["xsimpp_error_pct"] = pp["average"]["error_pct"]
            record.update({f"xsimpp_error_pct/{lang}": e["error_pct"] for lang, e in pp["languages"].items()})
        return record


def chooses_best(run_cfg, name: str) -> bool:
    """--best-metric: `name` ("xsim" or "mine") keeps the `best` checkpoint; auto is xsim when it runs, else mine."""
    if run_cfg.best_metric == "auto":
        return name == ("xsim" if run_cfg.xsim_every > 0 else "mine")
    return run_cfg.best_metric == name


class EvalHook(Hook):
    """Evaluate on the cadence, log, and, when this hook chooses `best`, keep the best checkpoint (module
    docstring). It sees the run through a `HookContext` only (pipeline/training/hooks.py). Subclasses set `name`,
    `metric` and `lower_is_better`, and an evaluator with `run(model, device)`, `tokens`, `rank` and `fingerprint`."""

    name, metric, lower_is_better, evaluator_class = "xsim", METRIC, True, XsimEvaluator

    @classmethod
    def for_run(cls, cfg, specials: dict, rank: int, world: int) -> EvalHook | None:
        """None when the evaluator's cadence flag is off; --best-metric says whether this hook keeps `best`."""
        evaluator = cls.evaluator_class.for_run(cfg, specials, rank, world)
        if evaluator is None:
            return None
        return cls(evaluator, getattr(cfg.run, evaluator.every), chooses_best(cfg.run, cls.name))

    def __init__(self, evaluator, every: int, keeps_best: bool = True):
        self.evaluator, self.every, self.keeps_best = evaluator, every, keeps_best
        self.tokens = evaluator.tokens  # encoded per evaluation on this rank: the schedule fit's estimate
        self.record = {f"{self.name}_sha256": evaluator.fingerprint}  # a relaunch on another set needs the flag

    def after_step(self, ctx: HookContext) -> None:
        if ctx.step % self.every == 0:
            self.evaluate(ctx)

    def at_end(self, ctx: HookContext) -> None:
        """The last step, when the cadence did not just score it."""
        if ctx.step % self.every:
            self.evaluate(ctx)

    def evaluate(self, ctx: HookContext) -> dict:
        record = self.evaluator.run(ctx.model, ctx.device)
        rank0 = self.evaluator.rank == 0
        if self.keeps_best:
            if rank0:
                self._rank(record, self._best_so_far(ctx.best()), ctx.step)
            record = collectives.broadcast_object(record)
            if record["is_best"]:  # every rank: the save is collective
                ctx.save_best(record[self.metric], self.metric, self.evaluator.fingerprint)
        record.update(step=ctx.step, time=time.time(), elapsed_s=ctx.elapsed())
        ctx.write(record)
        if rank0:
            self._log(record)
        return record

    def _rank(self, record: dict, best: dict | None, step: int) -> None:
        score = record[self.metric]
        better = best is None or (score < best["score"] if self.lower_is_better else score > best["score"])
        record["is_best"] = better
        record["best_" + self.metric] = score if better else best["score"]
        record["best_step"] = step if better else best["step"]

    def _best_so_far(self, best: dict | None) -> dict | None:
        """best.json when it was scored on this set with this metric; else None (a new lineage), said at WARNING."""
        if best is None or (best.get("fingerprint"), best.get("metric")) == (self.evaluator.fingerprint, self.metric):
            return best
        log.warning(
            "%s: `best` (%s, %s %.2f at step %s) was scored on another set or metric (fingerprint %s, now %s %s): "
            "not comparable; a new `best` lineage starts with this evaluation",
            self.name,
            best.get("tag"),
            best.get("metric"),
            best.get("score", float("nan")),
            best.get("step"),
            str(best.get("fingerprint"))[:12],
            self.metric,
            self.evaluator.fingerprint[:12],
        )
        return None

    def _best_text(self, r: dict, unit: str = "%") -> str:
        if not self.keeps_best:
            return "`best` chosen by the other metric"
        if r["is_best"]:
            return "new best, saved as `best`"
        return f"best {r['best_' + self.metric]:.2f}{unit} at step {r['best_step']}"


class XsimHook(EvalHook):
    """xsim / xsim++ on the cadence (module docstring)."""

    def _log(self, r: dict) -> None:
        pp = f" | xsim++ {r['xsimpp_error_pct']:.2f}%" if "xsimpp_error_pct" in r else ""
        best = self._best_text(r)
        log.info(
            "xsim step %d (%s, %d languages -> %s): pooled error %.2f%%%s | %s | %.1f s",
            r["step"],
            r["xsim_split"],
            r["languages"],
            r["target"],
            r[METRIC],
            pp,
            best,
            r["xsim_s"],
        )
