"""Checkpoints that are complete or ignored: DeepSpeed files + per-rank client state + a completion record.

Layout (OUTPUT/checkpoints/):
    step_00000050/mp_rank_00_model_states.pt           DeepSpeed: full module weights (ZeRO-2), engine counters
    step_00000050/zero_pp_rank_{r}_mp_rank_00_optim_states.pt   DeepSpeed: rank r's optimizer partition
    step_00000050/client_rank{r:05d}.pt                ours: sampler position, RNG states, collator, counters
    step_00000050/COMPLETE.json                        ours: written last, {file: {size, sha256}} of the above
    latest                                             tag of the newest complete checkpoint (DeepSpeed's format)
    best, best.json                                    tag of the best-scoring one (--xsim-every) + {tag, step,
                                                       score, metric}; `prune` never removes it

Commit protocol: every rank writes its files; all ranks agree that nobody failed (all-reduce); rank 0 hashes the
files into COMPLETE.json and only then replaces `latest` (tmp file + os.replace, atomic on POSIX). A kill at any
point leaves `latest` on the previous complete checkpoint. On resume the marked checkpoint is verified against its
COMPLETE.json; a truncated or corrupted one is skipped with a warning in favour of the newest one that verifies.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import torch

from pipeline.data.dataset import sha256_file
from pipeline.training.safe_load import SafeLoadError, check_deepspeed_files, load_trusted, pack
from runtime import collectives

log = logging.getLogger(__name__)
TAG_RE = re.compile(r"^step_(\d{8})$")
COMPLETE = "COMPLETE.json"
LATEST = "latest"
UNIVERSAL_DONE = "UNIVERSAL.json"  # written last into OUTPUT/universal/<tag> (world-size change)
RUN_RECORD = "run_record.json"  # pipeline/training/runrecord.py: the config and data this checkpoint was trained with
BEST, BEST_JSON = "best", "best.json"  # tag of the best-scoring checkpoint (text, as `latest`) + {tag, step, score}


class CheckpointError(RuntimeError):
    """Saving failed (disk full, I/O error); the message says which checkpoint survives."""


class NoUsableCheckpointError(CheckpointError):
    """Checkpoints were saved but none verifies: resuming is refused (exit 2), the message lists each one's fault."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `path` so that readers see either the old or the complete new content (tmp + fsync + os.replace)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointManager:
    """Save / verify / resume / prune checkpoints under OUTPUT/checkpoints (see the module docstring)."""

    def __init__(self, output_dir: str | Path, keep: int = 3, verify: str = "sha256", rank: int = 0):
        self.root = Path(output_dir) / "checkpoints"
        self.keep, self.verify_mode, self.rank = keep, verify, rank
        self.root.mkdir(parents=True, exist_ok=True)

    # -- listing -------------------------------------------------------------------------------------------------
    def tags(self) -> list[str]:
        """Checkpoint directories, newest step first (complete or not)."""
        found = [p.name for p in self.root.iterdir() if p.is_dir() and TAG_RE.match(p.name)]
        return sorted(found, reverse=True)

    def latest_marked(self) -> str | None:
        path = self.root / LATEST
        return path.read_text().strip() if path.is_file() else None

    def verify(self, tag: str) -> str | None:
        """None when `tag` matches its COMPLETE.json, else the reason it does not."""
        ckpt = self.root / tag
        try:
            record = json.loads((ckpt / COMPLETE).read_text())
        except FileNotFoundError:
            return f"{ckpt / COMPLETE} missing (the save never finished)"
        except (json.JSONDecodeError, OSError) as e:
            return f"{ckpt / COMPLETE} unreadable: {e}"
        for name, meta in record.get("files", {}).items():
            path = ckpt / name
            if not path.is_file():
                return f"{path} missing"
            if path.stat().st_size != meta["size"]:
                return f"{path} has {path.stat().st_size} bytes, {meta['size']} recorded (truncated?)"
            if self.verify_mode == "sha256" and sha256_file(path) != meta["sha256"]:
                return f"{path} sha256 differs from {COMPLETE} (corrupted)"
        return None

    def find_resume(self) -> str | None:
        """Rank 0 picks the newest checkpoint that verifies (the marked one first) and tells every rank.

        None when no checkpoint was ever completed (a fresh directory, or a first save killed before its commit).
        When some checkpoint was completed but none verifies now, every rank raises NoUsableCheckpointError listing
        each checkpoint and why it failed: starting over silently would overwrite the old run."""
        verdict: tuple[str | None, str | None] = (None, None)
        if self.rank == 0:
            verdict = self._choose()
        choice, error = collectives.broadcast_object(verdict)
        if error is not None:
            raise NoUsableCheckpointError(error)
        return choice

    def _choose(self) -> tuple[str | None, str | None]:
        """-> (tag, None) for the checkpoint to resume, (None, None) for a fresh start, (None, message) to refuse."""
        marked = self.latest_marked()
        for tag in (t for t in self.tags() if marked and t > marked):  # a save killed before its commit
            log.warning(
                "checkpoint %s is not usable: %s; ignored (newer than %s/%s = %s)",
                tag,
                self.verify(tag) or "never marked complete",
                self.root,
                LATEST,
                marked,
            )
        candidates = ([marked] if marked else []) + [t for t in self.tags() if t != marked]
        reasons = {}
        for tag in candidates:
            reason = self.verify(tag)
            if reason is None:
                return tag, None
            reasons[tag] = reason
            log.warning("checkpoint %s is not usable: %s; falling back to an older one", tag, reason)
        committed = marked is not None or any((self.root / t / COMPLETE).exists() for t in self.tags())
        if not committed:
            return None, None
        listing = "\n".join(f"  {tag}: {why}" for tag, why in reasons.items()) or f"  {self.root / LATEST}: {marked}"
        return None, (
            f"no checkpoint in {self.root} verifies, although a complete one was saved ({LATEST} = {marked}):\n"
            f"{listing}\nRestore the damaged files, or relaunch with --no-resume to start over (the old run is "
            "moved to OUTPUT/replaced-<time>/, nothing is deleted). Nothing was changed on disk"
        )

    # -- saving --------------------------------------------------------------------------------------------------
    def save(self, engine, step: int, client_state: dict) -> str:
        """Save a checkpoint of `step` on every rank; raise CheckpointError (previous one intact) on failure."""
        tag = tag_for(step)
        if self.latest_marked() == tag:
            return tag  # already saved at this step (e.g. --save-every hit the last step)
        ckpt = self.root / tag
        if self.rank == 0 and ckpt.exists():
            shutil.rmtree(ckpt)  # leftovers of a save that was killed: never mixed with new files
        collectives.barrier()
        space = self._space_error()
        if not collectives.all_ok(space is None):  # agreed before DeepSpeed's collectives start; nothing written yet
            raise space or CheckpointError(f"{ckpt}: another rank found no space for it; {self._kept()}")
        error = self._write_engine(engine, tag, step)
        if error is not None and collectives.world()[1] > 1:
            self._abort_alone(ckpt, error)
        error = error or self._write_client(tag, client_state)
        if not collectives.all_ok(error is None):
            self._abort(ckpt, error)
        collectives.barrier()
        self._hash_own_files(tag)
        if self.rank == 0:
            self._commit(tag, step)
            self.prune()
        collectives.barrier()
        return tag

    def _hash_own_files(self, tag: str) -> None:
        """Each rank hashes the files it wrote (its optimizer partition and client state; rank 0 also the module
        states), in parallel, and rank 0 collects them: a large model's ~10 GB of checkpoint hash in 1/W the time."""
        ckpt = self.root / tag
        own = {
            p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(ckpt.iterdir())
            if p.is_file() and p.name != COMPLETE and _writer_rank(p.name) == self.rank
        }
        parts = collectives.all_gather_object(own)
        self._hashes = {name: meta for part in parts for name, meta in part.items()}

    def _write_engine(self, engine, tag: str, step: int) -> BaseException | None:
        """DeepSpeed's save: module states (rank 0) and this rank's optimizer partition; collectives inside."""
        try:
            engine.save_checkpoint(str(self.root), tag=tag, client_state={"step": step}, save_latest=False)
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError("... write failed")
            return e
        return None

    def _write_client(self, tag: str, client_state: dict) -> BaseException | None:
        """Ours, no collective: this rank's client state; rank 0 also the run record."""
        try:
            write_atomic(self.root / tag / f"client_rank{self.rank:05d}.pt", _torch_bytes(client_state))
            if self.rank == 0 and "run_record" in client_state:  # what this checkpoint was trained with (readable)
                write_atomic(self.root / tag / RUN_RECORD, json.dumps(client_state["run_record"], indent=1).encode())
        except (OSError, RuntimeError) as e:
            return e
        return None

    def _space_error(self) -> CheckpointError | None:
        try:
            self._check_space()
        except CheckpointError as e:
            return e
        return None

    def _kept(self) -> str:
        kept = self.latest_marked()
        return f"the previous complete checkpoint {kept} is intact" if kept else "no earlier checkpoint exists"

    def _abort_alone(self, ckpt: Path, error: BaseException) -> None:
        """DeepSpeed's save failed on this rank. Its peers may be waiting for it inside DeepSpeed's own collectives
        (NCCL on GPUs), where a verdict over gloo never meets them: a hang until --dist-timeout. So this rank stops
        with the error at once, and the launcher (deepspeed, torchrun) stops the others; a peer blocked on gloo gets
        the closed connection. The partial files stay until the next save of this step or a resume removes them;
        `latest` still names the previous complete checkpoint."""
        raise CheckpointError(
            f"rank {self.rank}: saving {ckpt} failed in DeepSpeed's save_checkpoint ({_failure(error, self.root)}); "
            f"stopping every rank, as the others may wait for this one inside DeepSpeed's collectives; "
            f"{self._kept()}. Fix the cause and relaunch the same command to resume"
        ) from error

    def _check_space(self) -> None:
        """Refuse to start a save that cannot fit: the last complete checkpoint's size + 5% must be free."""
        marked = self.latest_marked()
        if marked is None or not (self.root / marked).is_dir():
            return
        need = sum(p.stat().st_size for p in (self.root / marked).iterdir() if p.is_file())
        free = shutil.disk_usage(self.root).free
        if free < need * 1.05:
            raise CheckpointError(
                f"no space left for a checkpoint in {self.root}: the last one ({marked}) took "
                f"{need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free; {marked} is intact. Free "
                "space (or lower --keep-checkpoints) and relaunch the same command to resume"
            )

    def _abort(self, ckpt: Path, error: BaseException | None) -> None:
        what = _failure(error, self.root)  # before the partial files go: their space is part of the diagnosis
        collectives.barrier()
        if self.rank == 0 and ckpt.exists():
            shutil.rmtree(ckpt, ignore_errors=True)
        raise CheckpointError(
            f"saving {ckpt} failed ({what}); the partial files were removed and {self._kept()}. "
            "Free space / fix the disk and relaunch the same command to resume"
        ) from error

    def _commit(self, tag: str, step: int) -> None:
        """Rank 0: COMPLETE.json (sizes + sha256 gathered from every rank), then the `latest` marker; both atomic."""
        ckpt = self.root / tag
        record = {"tag": tag, "step": step, "time": time.time(), "files": dict(sorted(self._hashes.items()))}
        write_atomic(ckpt / COMPLETE, json.dumps(record, indent=1).encode())
        write_atomic(self.root / LATEST, tag.encode())

    def set_aside(self, also: tuple[str, ...] = ()) -> Path | None:
        """--no-resume: move checkpoints/ and the run files named in `also` (metrics.jsonl, wandb_id.txt, config.json,
        ...) of OUTPUT into OUTPUT/replaced-<time>/ (rank 0), so the new run's `latest`, pruning, metrics and wandb id
        never meet the old run's, and the old run stays whole. Returns that folder, or None when there was nothing."""
        moved = None
        out = self.root.parent
        present = [out / name for name in also if (out / name).exists()]
        if self.rank == 0 and (any(self.root.iterdir()) or present):
            moved = out / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            while moved.exists():  # two --no-resume launches within a second
                moved = moved.with_name(moved.name + "-1")
            moved.mkdir()
            for path in [self.root, *present]:
                os.replace(path, moved / path.name)
            self.root.mkdir()
            log.warning("--no-resume: the previous run (checkpoints, metrics, records) was moved to %s", moved)
        collectives.barrier()
        return moved

    def prune(self) -> None:
        """Rank 0: keep the newest `keep` complete checkpoints (never the marked one nor `best`); drop older and
        broken ones."""
        marked = self.latest_marked()
        complete = [t for t in self.tags() if (self.root / t / COMPLETE).is_file()]
        keep = set(complete[: self.keep]) | {marked} | self._best_tags()
        for tag in self.tags():
            newer_than_marked = marked is not None and tag > marked
            if tag not in keep and not newer_than_marked:
                shutil.rmtree(self.root / tag, ignore_errors=True)

    # -- best ----------------------------------------------------------------------------------------------------
    def best_tag(self) -> str | None:
        path = self.root / BEST
        return path.read_text().strip() if path.is_file() else None

    def _best_tags(self) -> set[str]:
        """The `best` marker's tag and best.json's (they differ only after a kill between the two writes)."""
        try:
            recorded = {json.loads((self.root / BEST_JSON).read_text())["tag"]}
        except (OSError, ValueError, KeyError, TypeError):
            recorded = set()
        return recorded | ({self.best_tag()} - {None})

    def best(self) -> dict | None:
        """{tag, step, score, metric, fingerprint} of the best checkpoint so far (checkpoints/best.json), or None."""
        try:
            return json.loads((self.root / BEST_JSON).read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, OSError) as e:
            log.warning("%s unreadable (%s): the next evaluation starts a new best", self.root / BEST_JSON, e)
            return None

    def mark_best(self, tag: str, step: int, score: float, metric: str, fingerprint: str = "") -> None:
        """Rank 0: record the complete checkpoint `tag` as `best` (best.json first, then the `best` marker, both
        atomic); pruning then keeps it until a better one replaces it. `fingerprint`: the test set's content, which
        a later score must share to be compared (eval/train_hook.py). No-op on other ranks."""
        if self.rank != 0:
            return
        if not (self.root / tag / COMPLETE).is_file():
            raise CheckpointError(f"{self.root / tag}: not a complete checkpoint, cannot mark it {BEST}")
        record = {"tag": tag, "step": step, "score": score, "metric": metric, "time": time.time()}
        record["fingerprint"] = fingerprint
        write_atomic(self.root / BEST_JSON, (json.dumps(record, indent=1) + "\n").encode())
        write_atomic(self.root / BEST, tag.encode())
        self.prune()  # the previous best, if now outside the newest `keep`, goes

    # -- loading -------------------------------------------------------------------------------------------------
    def load(self, engine, tag: str, trust: bool = False) -> dict:
        """Restore engine (module, optimizer, scheduler) and return this rank's client state.

        Every file is checked with the weights-only unpickler first (pipeline/training/safe_load.py): DeepSpeed and its
        universal converter unpickle with weights_only=False, so a received checkpoint could otherwise run code.
        A file that needs more is refused (NoUsableCheckpointError, exit 2) unless `trust` (--trust-checkpoint)."""
        try:
            return self._load(engine, tag, trust)
        except SafeLoadError as e:
            raise NoUsableCheckpointError(f"{e}. Nothing was changed on disk") from e

    def _load(self, engine, tag: str, trust: bool) -> dict:
        check_deepspeed_files(self.root / tag, trust)  # each rank: DeepSpeed reads every partition on every rank
        universal = bool(engine.load_universal_checkpoint())  # another world size (pipeline/config/ds_json.py)
        src = self.universal(tag) if universal else self.root
        if universal:
            check_deepspeed_files(src / tag, trust)  # a received run dir may hold a universal/ folder too
        path, _ = engine.load_checkpoint(
            str(src),
            tag=tag,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {self.root / tag}")
        client = self._client_path(tag, universal)
        if not client.is_file():
            raise CheckpointError(
                f"{client} missing: the checkpoint was written by fewer ranks than this run has; "
                "relaunch with the same number of processes"
            )
        state = load_trusted(client, trust)
        return _fresh_rng(state, self.rank) if universal else state

    # -- another world size ----------------------------------------------------------------------------------------
    def universal(self, tag: str) -> Path:
        """Root holding `tag` as a DeepSpeed universal checkpoint (ZeRO-2 optimizer state per parameter, loadable on
        any number of ranks): OUTPUT/universal/<tag>, converted once by rank 0 with DeepSpeed's ds_to_universal and
        logged; the original checkpoint is never modified. Every rank gets rank 0's verdict."""
        root = self.root.parent / "universal"
        error = None
        if self.rank == 0 and not self._universal_current(tag, root):
            error = self._convert_universal(tag, root)
        error = collectives.broadcast_object(error)
        if error is not None:
            raise CheckpointError(error)
        return root

    def _complete_sha(self, tag: str) -> str:
        return sha256_file(self.root / tag / COMPLETE)

    def _universal_current(self, tag: str, root: Path) -> bool:
        """A finished conversion of this very checkpoint (not of a same-named one of a run set aside)."""
        try:
            record = json.loads((root / tag / UNIVERSAL_DONE).read_text())
            return record.get("source_complete_sha256") == self._complete_sha(tag)
        except (OSError, ValueError):
            return False

    def _convert_universal(self, tag: str, root: Path) -> str | None:
        """ds_to_universal into a temporary sibling, then one rename; older conversions are removed."""
        import argparse
        import contextlib
        import io

        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

        t0, tmp = time.time(), root / f".{tag}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        args = argparse.Namespace(
            input_folder=str(self.root / tag),
            output_folder=str(tmp / tag),
            num_extract_workers=1,  # in-process: no fork of a process that holds a process group
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,  # ZeRO-2 outside Megatron records no universal_checkpoint_info; the default
        )
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its prints
                ds_to_universal(args)
            record = {"source": str(self.root / tag), "source_complete_sha256": self._complete_sha(tag)}
            (tmp / tag / UNIVERSAL_DONE).write_text(json.dumps(record))
            for old in root.glob("step_*"):
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp / tag, root / tag)
        except (OSError, RuntimeError, ValueError, AssertionError, KeyError) as e:
            return f"converting {self.root / tag} to a universal checkpoint (another world size) failed: {e!r}"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        dt = time.time() - t0
        log.info("world size changed: %s converted to the universal checkpoint %s in %.1f s", self.root / tag, root, dt)
        return None

    def _client_path(self, tag: str, universal: bool) -> Path:
        """This rank's client state; on another world size, that of rank (rank mod old world size): the sampler
        position is global (identical on every rank), the RNG streams are re-derived by `_fresh_rng`."""
        own = self.root / tag / f"client_rank{self.rank:05d}.pt"
        if not universal or own.is_file():
            return own
        n_old = len(list((self.root / tag).glob("client_rank*.pt")))
        return self.root / tag / f"client_rank{self.rank % max(1, n_old):05d}.pt"


def latest_batch_record(output_dir: str | Path) -> dict | None:
    """The batch arithmetic ({micro, gas, world_size}) of the checkpoint a resume will pick (`resume_candidate`),
    or None; read before the engine exists so that a relaunch on another world size keeps the global batch."""
    tag = resume_candidate(output_dir)
    if tag is None:
        return None
    try:
        return json.loads((Path(output_dir) / "checkpoints" / tag / RUN_RECORD).read_text()).get("batch")
    except (OSError, ValueError, AttributeError):
        return None


def resume_candidate(output_dir: str | Path) -> str | None:
    """The tag `find_resume` tries first: the one `latest` marks, else (the marker deleted or damaged) the newest
    checkpoint with a COMPLETE.json. Cheap (no hashing); `Trainer.resume` checks that the checkpoint it loads is
    the same one."""
    root = Path(output_dir) / "checkpoints"
    try:
        marked = (root / LATEST).read_text().strip()
    except OSError:
        marked = ""
    if TAG_RE.match(marked) and (root / marked / COMPLETE).is_file():
        return marked
    tags = sorted(
        (p.name for p in root.glob("step_*") if TAG_RE.match(p.name) and (p / COMPLETE).is_file()), reverse=True
    )
    return tags[0] if tags else None


def _fresh_rng(state: dict, rank: int) -> dict:
    """RNG states for a resume on another world size: a rank's old stream may not exist (more ranks) or would be
    shared (rank mod W), so python / numpy / torch restart from (seed, step, rank). Masking does not depend on them
    (keyed by the global micro batch, pipeline/data/sampler.py); dropout does."""
    import random

    import numpy as np

    seed = int(np.random.SeedSequence([int(state["sampler"]["seed"]), int(state["step"]), rank]).generate_state(1)[0])
    state["rng"] = {
        "python": random.Random(seed).getstate(),
        "numpy": np.random.RandomState(seed).get_state(),
        "torch": torch.Generator().manual_seed(seed).get_state(),
    }
    return state


def _writer_rank(name: str) -> int:
    """Rank that wrote a checkpoint file: zero_pp_rank_{r}_... (DeepSpeed, also bf16_zero_pp_rank_...), client_rank{r}
    (ours); anything else (mp_rank_00_model_states.pt) rank 0."""
    m = re.search(r"zero_pp_rank_(\d+)_", name) or re.fullmatch(r"client_rank(\d+)\.pt", name)
    return int(m.group(1)) if m else 0


def _torch_bytes(obj) -> bytes:
    """torch.save bytes of a client state, numpy arrays packed (safe_load.pack) so weights_only=True loads it."""
    import io

    buf = io.BytesIO()
    torch.save(pack(obj), buf)
    return buf.getvalue()


# torch.save's C++ writer reports a full disk without errno. Measured (torch 2.13, a full 256 KiB tmpfs and
# /dev/full): "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598", "basic_ios::clear: iostream
# error"; other versions say "PytorchStreamWriter failed writing file data/0: file write failed".
_TORCH_WRITE_FAILED = ("enforce fail", "PytorchStreamWriter failed", "file write failed", "iostream error")
_LOW_SPACE = 64 * 2**20  # below this much free space after a failed write, the disk was full


def _failure(error: BaseException | None, root: Path) -> str:
    """A failed save's cause in words: errno ENOSPC, or torch's writer error on a device that is (nearly) full."""
    if error is None:
        return "I/O error on another rank"
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or "No space left" in text:
        return "no space left on the device"
    if not any(s in text for s in _TORCH_WRITE_FAILED):
        return f"I/O error: {text}"
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return f"write failed: {text}"
    if free < _LOW_SPACE:
        return f"no space left on the device: {free / 2**20:.1f} MiB free; torch: {text}"
    return f"write failed ({text}) with {free / 2**20:.0f} MiB free: over a quota, or an I/O error"
