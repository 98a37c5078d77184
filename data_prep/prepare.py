"""`prepare(cfg)`: parallel corpora -> a prepared dataset directory, as tasks of a data engine (engine.py).

1. Take `--out`'s lock (lock.py), fingerprint the flags and inputs; an output with this fingerprint is up to date.
2. Plan (plan.py): the read tasks and key partitions, from the inputs and flags alone.
3. Open the work directory beside `--out`: a killed build of the same plan is resumed, anything else starts over.
4. Run the stages (data_prep/stages/): read + clean + hash, count, dedup by key partition (+ the tokenizer
   sample), tokenizer, encode, merge. The merge writes `manifest.json` last and puts the build in place of OUT.

Every skipped record is counted by reason and listed in `skipped.jsonl`; a failure at any point (bad input,
SIGKILL) leaves a previous output of `--out` as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import output, workdir
from .engine import Cluster, run_local, submit_slurm
from .langcodes import to_flores
from .lock import OutLock
from .plan import make_plan
from .records import SourceError
from .sources import ReadOptions, Source
from .stages.common import Work
from .stages.merge import FORMAT_VERSION
from .tokenizer import backend_json, dir_sha256

log = logging.getLogger("data_prep")
NOT_OUTPUT = ("workers", "force", "out", "partitions", "task_mb", "machines", "machine_rank", "executor", "slurm")


@dataclass
class PrepConfig:
    """Arguments of `python -m data_prep` (one field per flag; see `--help`)."""

    sources: list[str]
    """`FORMAT:PATH_OR_GLOB` specs (--source)."""
    out: str
    """Output directory (--out)."""
    tokenizer: str | None = None
    """Pretrained tokenizer path or hub name (--tokenizer)."""
    train_tokenizer: int | None = None
    """Vocabulary size of a Unigram tokenizer trained on the kept text (--train-tokenizer)."""
    tokenizer_max_sentences: int = 1_000_000
    """Sentences in the tokenizer's training sample (--tokenizer-max-sentences). Training costs about 0.4 ms a
    sentence on one 2-core machine (data_prep/bench.py)."""
    tokenizer_alpha: float = 1.0
    """Language-pair temperature of the tokenizer sample (--tokenizer-alpha): pair p's share ~ n_p ** alpha, the
    rule and default of training's --lang-alpha (1: proportional to the pairs, 0: the same for every pair)."""
    max_tokens: int = 200
    """Maximum ids per side including <s> and </s> (--max-tokens); longer sides are truncated and counted."""
    max_chars: int = 1000
    """Pairs with a side longer than this many characters are skipped (--max-chars)."""
    max_ratio: float = 6.0
    """Pairs whose longer side has more than this many times the characters of the other are skipped."""
    valid_fraction: float = 0.01
    """Share of unique pairs held out for `valid/`, chosen by pair hash (--valid-fraction)."""
    min_valid: int = 8
    """At least this many valid pairs (the smallest hashes) when the fraction gives fewer (--min-valid)."""
    max_pairs: int | None = None
    """Stop reading after this many records in --source order (--max-pairs); the manifest says so."""
    exclude_flores: str | None = None
    """A FLORES-layout dir whose sentences (any language, any split) must not occur in training (--exclude-flores)."""
    read: ReadOptions = field(default_factory=ReadOptions)
    workers: int = 0
    """Processes on this machine (--workers; 0: all cores)."""
    partitions: int | None = None
    """Dedup/encode partitions, i.e. shards per split (--partitions; default from the input size)."""
    task_mb: float | None = None
    """Input megabytes per read task (--task-mb; default from the input size)."""
    machines: int = 1
    """Machines sharing the build over a shared file system (--machines)."""
    machine_rank: int = 0
    """This machine's number (--machine-rank)."""
    executor: str = "local"
    """`local` or `slurm` (--executor)."""
    slurm: dict = field(default_factory=dict)
    """SlurmPipelineExecutor arguments (--slurm-partition, --slurm-time, ...)."""
    force: bool = False
    """Rebuild even when the manifest fingerprint matches (--force)."""

    def check(self) -> None:
        if (self.tokenizer is None) == (self.train_tokenizer is None):
            raise ValueError("give exactly one of --tokenizer NAME_OR_PATH and --train-tokenizer VOCAB_SIZE")
        if not self.sources:
            raise ValueError("give at least one --source FORMAT:PATH")
        if self.max_tokens < 3:
            raise ValueError(f"--max-tokens {self.max_tokens}: need room for <s>, one token and </s>")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"--valid-fraction {self.valid_fraction}: must be in [0, 1)")
        if self.max_ratio < 1.0 or self.max_chars < 1:
            raise ValueError(f"--max-ratio {self.max_ratio} must be >= 1 and --max-chars {self.max_chars} >= 1")
        if not (self.tokenizer_alpha >= 0 and self.tokenizer_alpha < float("inf")):
            raise ValueError(f"--tokenizer-alpha {self.tokenizer_alpha}: must be a finite number >= 0")
        if self.machines < 1 or not 0 <= self.machine_rank < self.machines:
            raise ValueError(f"--machine-rank {self.machine_rank}: must be in [0, --machines {self.machines})")
        if self.min_valid < 0 or (self.max_pairs is not None and self.max_pairs < 0):
            raise ValueError("--min-valid and --max-pairs must be >= 0")
        for flag, code in (("--src-lang", self.read.src_lang), ("--trg-lang", self.read.trg_lang)):
            if to_flores(code) is None:
                raise ValueError(f"{flag} {code!r}: not a FLORES-200 code (fra_Latn) nor a known locale (fr, pt_BR)")

    def args_json(self) -> dict:
        """The arguments that decide the output (not workers, machines, partitions: the rows do not depend on them)."""
        return {k: v for k, v in asdict(self).items() if k not in NOT_OUTPUT}

    def stage_json(self, aux_inputs: list[dict]) -> dict:
        """What the stages read from the plan."""
        keep = ("out", "max_chars", "max_ratio", "max_pairs", "valid_fraction", "min_valid", "tokenizer",
                "train_tokenizer", "tokenizer_alpha", "tokenizer_max_sentences", "max_tokens")  # fmt: skip
        return {**{k: getattr(self, k) for k in keep}, "read": asdict(self.read), "args": self.args_json(),
                "aux_inputs": aux_inputs}  # fmt: skip


def prepare(cfg: PrepConfig) -> dict:
    """Build (or confirm up to date) the prepared directory `cfg.out`; returns the manifest (for `--executor
    slurm`: `{"submitted": JOB_ID}` once the job arrays are queued).

    A failure at any point (bad input, SIGKILL) leaves a previous output of `cfg.out` as it was."""
    cfg.check()
    out = Path(cfg.out)
    sources = [Source.parse(s) for s in cfg.sources]
    aux = _aux_inputs(cfg)
    fingerprint = _fingerprint(cfg, sources, aux)
    with OutLock(out, f"{fingerprint}:{cfg.machines}", cfg.machine_rank):
        return _prepare_locked(cfg, out, sources, aux, fingerprint)


def _prepare_locked(cfg: PrepConfig, out: Path, sources: list[Source], aux: list[dict], fingerprint: str) -> dict:
    if cfg.machine_rank == 0:
        workdir.settle(out)
    old = _up_to_date(out, fingerprint)
    if old is not None and (not cfg.force or cfg.machine_rank > 0):
        if cfg.machine_rank == 0 and not (workdir.work_dir(out) / "build").is_dir():
            shutil.rmtree(workdir.work_dir(out), ignore_errors=True)  # left by a kill after the swap
        log.info("%s is up to date (fingerprint %s); nothing to do (--force rebuilds)", out, fingerprint[:12])
        return old
    workdir.check_replaceable(out)
    plan = make_plan(fingerprint, cfg, sources, aux)
    identity = plan.identity()
    if cfg.machine_rank == 0:
        work_path, resumed = workdir.open_work(out, plan.to_json(), identity)
        work = Work(work_path)
        work.mkdirs()
        if not resumed:
            _write_held_out(work, cfg.exclude_flores)
        log.info("%s %s: %d read tasks, %d partitions", "resuming" if resumed else "building", out, len(plan.tasks),
                 plan.partitions)  # fmt: skip
    else:
        work = _join(out, identity, fingerprint)
        if work is None:
            return _up_to_date(out, fingerprint) or {}
    return _run(cfg, out, work, identity, plan, fingerprint)


def _run(cfg: PrepConfig, out: Path, work: Work, identity: str, plan, fingerprint: str) -> dict:
    workers = cfg.workers or os.cpu_count() or 1
    cluster = Cluster(workers, cfg.machines, cfg.machine_rank, cfg.executor, cfg.slurm)
    if cfg.executor == "slurm":
        return {"submitted": submit_slurm(work, identity, plan, cluster)}
    try:
        run_local(work, identity, plan, cluster, lambda: _up_to_date(out, fingerprint) is not None)
    except (SourceError, ValueError):
        if cfg.machines == 1:
            workdir.abandon(work.root)  # a bad input: nothing of this build is worth resuming
        raise
    manifest = _up_to_date(out, fingerprint)
    if manifest is None:
        raise RuntimeError(f"{out}: the build ended without a complete output (see {work.engine}/*/logs)")
    if cfg.machine_rank == 0:
        shutil.rmtree(work.root, ignore_errors=True)
    log.info("wrote %s: %d train + %d valid pairs", out, manifest["rows"]["train"], manifest["rows"]["valid"])
    return manifest


def _join(out: Path, identity: str, fingerprint: str, poll: float = 0.5) -> Work | None:
    """Machine rank > 0: wait for machine 0 to open the work directory of this plan; None if the build is done."""
    work, last = workdir.work_dir(out), time.monotonic()
    while True:
        if workdir.plan_identity(work) == identity and (work / "engine").is_dir():
            return Work(work)
        if _up_to_date(out, fingerprint) is not None:
            return None
        if time.monotonic() - last > 30:
            log.info("waiting for machine 0 to start the build in %s", work)
            last = time.monotonic()
        time.sleep(poll)


def _write_held_out(work: Work, folder: str | None) -> None:
    """`overlap_key` of every line of every file under a FLORES-layout folder, one per line, for the read tasks."""
    from .clean import overlap_key

    keys: set[str] = set()
    if folder:
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"--exclude-flores {folder}: not a directory")
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".dev", ".devtest")):
            keys.update(k for k in map(overlap_key, path.read_text(encoding="utf-8").splitlines()) if k)
    (work.one("held_out.txt")).write_text("".join(k + "\n" for k in sorted(keys)), encoding="utf-8")


def _aux_inputs(cfg: PrepConfig) -> list[dict]:
    """The inputs besides the corpora, hashed here (small): the --exclude-flores files and the --tokenizer."""
    entries = []
    if cfg.exclude_flores:
        root = Path(cfg.exclude_flores)
        if not root.is_dir():
            raise FileNotFoundError(f"--exclude-flores {cfg.exclude_flores}: not a directory")
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            entries.append({"source": "exclude", "path": str(path), "size": path.stat().st_size,
                            "sha256": output.file_sha256(path)})  # fmt: skip
    if cfg.tokenizer is not None:
        entries.append(_tokenizer_entry(cfg.tokenizer))
    return entries


def _tokenizer_entry(name_or_path: str) -> dict:
    """The `--tokenizer` as an input: the sha256 of its files (a local path) or of the tokenizer that
    transformers resolves for a hub name, so a changed tokenizer changes the fingerprint."""
    path = Path(name_or_path)
    if path.is_dir():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return {"source": "tokenizer", "path": name_or_path, "size": size, "sha256": dir_sha256(path)}
    if path.is_file():
        return {"source": "tokenizer", "path": name_or_path, "size": path.stat().st_size,
                "sha256": output.file_sha256(path)}  # fmt: skip
    try:
        backend = backend_json(name_or_path)
    except (OSError, ValueError) as e:
        raise ValueError(f"--tokenizer {name_or_path}: cannot load ({e})") from None
    digest = hashlib.sha256(backend.encode()).hexdigest()
    return {"source": "tokenizer", "path": name_or_path, "size": None, "sha256": digest}


def _fingerprint(cfg: PrepConfig, sources: list[Source], aux: list[dict]) -> str:
    """Format version, output-deciding flags, each corpus file's (path, size, mtime) and the small inputs' sha256.

    Corpus files are identified by their stat, not hashed here: at a billion pairs, hashing the input in one process
    would take longer than the build; the read tasks hash them in parallel into the manifest's `inputs`."""
    files = []
    for src in sources:
        for path in src.files(cfg.read):
            st = path.stat()
            files.append((src.name, str(path), st.st_size, st.st_mtime_ns))
    blob = {"version": FORMAT_VERSION, "args": cfg.args_json(), "files": files,
            "aux": [(e["source"], e["sha256"]) for e in aux]}  # fmt: skip
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def _up_to_date(out: Path, fingerprint: str) -> dict | None:
    """The existing manifest if it has this fingerprint and every shard it lists is present."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("fingerprint") != fingerprint:
        return None
    if not all((out / s["file"]).is_file() for s in manifest.get("shards", [])):
        return None
    return manifest
