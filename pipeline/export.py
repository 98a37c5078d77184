"""DeepSpeed checkpoint -> Hugging Face directory (XLMRobertaModel + tokenizer) loadable by sentence-transformers.

    python -m pipeline.export CHECKPOINT_OR_RUN_DIR OUT_DIR [--tag latest|best|step_NNNNNNNN]
                              [--allow-unverified] [--trust-checkpoint]

CHECKPOINT_OR_RUN_DIR: a training output directory (its newest checkpoint that verifies, or `--tag`) or one checkpoint
directory (OUTPUT/checkpoints/step_NNNNNNNN). The checkpoint is verified against its COMPLETE.json (sizes and sha256,
as resume does); an unverified one is refused unless `--allow-unverified` (then a warning says what failed). Every
DeepSpeed file is checked with the weights-only unpickler before DeepSpeed's zero_to_fp32 unpickles it
(pipeline/training/safe_load.py); a file that needs more is refused unless `--trust-checkpoint`. The weights are
consolidated
(the fp32 master weights of every ZeRO partition: exact for bf16 runs too), loaded into the model that `build_model`
makes from the run's config.json, and `model.encoder.save_pretrained` writes them as model.safetensors under the stock
HF names (transformers 5 writes safetensors only), with a pooler (`pooler.dense`) at HF's initialisation: MEXMA trains
none (its sentence embedding is the CLS hidden state, `last_hidden_state[:, 0]`), and the stock class, which builds one,
then loads the directory without reporting its weights as MISSING. OUT_DIR also gets the run's tokenizer and the
sentence-transformers files (modules.json, sentence_bert_config.json, config_sentence_transformers.json,
1_Pooling/config.json with CLS pooling), so both `XLMRobertaModel.from_pretrained(OUT_DIR)` and
`SentenceTransformer(OUT_DIR)` load it.

OUT_DIR must lie outside the run directory and be new, empty or an earlier export: the export is written beside it
and renamed into place, so a failed export changes nothing. Its files get the modes the umask gives (0644 under the
usual 022), so others on a shared disk can read them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import torch

from pipeline.model.mexma import ModelConfig, build_model
from pipeline.training.checkpoint import BEST, COMPLETE, LATEST, TAG_RE, CheckpointManager, NoUsableCheckpointError
from pipeline.training.safe_load import TRUST_FLAG, SafeLoadError, check_deepspeed_files
from runtime.env import apply_defaults
from runtime.received import RemoteCodeError, load_tokenizer, tokenizer_fingerprint

log = logging.getLogger(__name__)
EXPORT_ATTENTION = "sdpa"  # what the exported config names: stock PyTorch attention, no import of ours needed
EXPORT_RECORD = "mexma_export.json"
ALLOW_FLAG = "--allow-unverified"


class ExportError(RuntimeError):
    """The source is not a usable checkpoint, or OUT_DIR is not a safe place; the message names the path."""


def locate(src: str | Path, tag: str | None = None, allow_unverified: bool = False) -> tuple[Path, Path, str]:
    """-> (run dir, checkpoints root, tag) for a run dir (newest verified checkpoint, or `tag`) or one checkpoint dir;
    the checkpoint verifies against its COMPLETE.json, or `allow_unverified` turns the refusal into a warning."""
    src = Path(src)
    if (src / "checkpoints").is_dir():
        run_dir, root = src, src / "checkpoints"
        if tag in (None, LATEST):
            return run_dir, root, _newest(run_dir, allow_unverified)  # verified by find_resume (or warned)
        tag = _run_tag(run_dir, tag)
    elif (src / "mp_rank_00_model_states.pt").is_file():
        if tag is not None:
            raise ExportError(f"--tag {tag}: SRC {src} is one checkpoint already; --tag needs a training output dir")
        if src.parent.name != "checkpoints":
            raise ExportError(f"{src}: expected a checkpoint inside RUN/checkpoints/ (the run's config.json is in RUN)")
        run_dir, root, tag = src.parent.parent, src.parent, src.name
    else:
        raise ExportError(
            f"{src}: neither a training output dir (with checkpoints/) nor a checkpoint dir "
            "(with mp_rank_00_model_states.pt)"
        )
    _check_verified(run_dir, tag, allow_unverified)
    return run_dir, root, tag


def _run_tag(run_dir: Path, tag: str) -> str:
    """The tag `--tag` names: step_NNNNNNNN, or best (the tag in the file checkpoints/best)."""
    root = run_dir / "checkpoints"
    if tag == BEST:
        try:
            tag = (root / BEST).read_text().strip()
        except OSError as e:
            raise ExportError(
                f"--tag best: {root / BEST} missing or unreadable ({e.strerror}); it is written by training with "
                "--xsim-every. Use --tag latest or --tag step_NNNNNNNN"
            ) from e
    if not TAG_RE.match(tag) or not (root / tag).is_dir():
        have = sorted(p.name for p in root.iterdir() if TAG_RE.match(p.name))
        raise ExportError(f"--tag {tag}: no checkpoint {root / tag} (there: {', '.join(have) or 'none'})")
    return tag


def _newest(run_dir: Path, allow_unverified: bool) -> str:
    mgr = CheckpointManager(run_dir, verify="sha256")
    try:
        tag = mgr.find_resume()
    except NoUsableCheckpointError as e:
        if not allow_unverified:
            raise ExportError(f"{e}\n(or pass {ALLOW_FLAG} to export the newest anyway)") from e
        tag = None
    if tag is None and allow_unverified and mgr.tags():
        tag = mgr.latest_marked() or mgr.tags()[0]
        _check_verified(run_dir, tag, allow_unverified)  # the warning
        return tag
    if tag is None:
        raise ExportError(f"{mgr.root}: no complete checkpoint (nothing with a valid {COMPLETE})")
    return tag


def _check_verified(run_dir: Path, tag: str, allow_unverified: bool) -> None:
    reason = CheckpointManager(run_dir, verify="sha256").verify(tag)
    if reason is None:
        return
    if not allow_unverified:
        raise ExportError(
            f"{run_dir / 'checkpoints' / tag} does not verify: {reason}. Export a complete checkpoint, or pass "
            f"{ALLOW_FLAG} to export this one anyway"
        )
    log.warning("exporting the UNVERIFIED checkpoint %s (%s): %s", run_dir / "checkpoints" / tag, ALLOW_FLAG, reason)


def check_output(out: Path, run_dir: Path) -> None:
    """Refuse an OUT_DIR that would overwrite the run (equal, inside or around it) or other files."""
    o, r = out.resolve(), run_dir.resolve()
    if o == r or r in o.parents or o in r.parents:
        where = "is" if o == r else ("is inside" if r in o.parents else "contains")
        raise ExportError(
            f"OUT_DIR {out} {where} the run directory {run_dir}: the export would overwrite or move its files "
            "(config.json). Choose an OUT_DIR outside the run directory"
        )
    if out.exists() and not out.is_dir():
        raise ExportError(f"OUT_DIR {out} is a file; choose a new directory")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_RECORD).is_file():
        raise ExportError(f"OUT_DIR {out} is not empty and holds no earlier export ({EXPORT_RECORD}); choose a new one")


def load_run_config(run_dir: Path) -> tuple[ModelConfig, dict]:
    path = run_dir / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: missing or unreadable ({e}); the run's resolved config, written by train.py") from e
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise ExportError(f"{path}: not a training config (no 'model' section; was an export written into the run?)")
    model_cfg = dataclasses.replace(ModelConfig.from_dict(cfg["model"]), gradient_checkpointing=False)
    return model_cfg, cfg


def consolidated_state_dict(root: Path, tag: str, trust: bool = False) -> dict[str, torch.Tensor]:
    """fp32 module weights from the ZeRO partitions (DeepSpeed's zero_to_fp32), keyed like model.state_dict().
    Its files are checked with the weights-only unpickler first: zero_to_fp32 unpickles with weights_only=False."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        check_deepspeed_files(root / tag, trust)
    except SafeLoadError as e:
        raise ExportError(str(e)) from e
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, AssertionError, IndexError) as e:
        raise ExportError(f"{root / tag}: DeepSpeed cannot consolidate it ({type(e).__name__}: {e})") from e
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_trained_model(src: str | Path, tag: str | None = None, trust: bool = False, allow_unverified: bool = False):
    """-> (MexmaModel with the checkpoint's weights, in eval mode, run dir, tag)."""
    run_dir, root, tag = locate(src, tag, allow_unverified)
    return _load_model(run_dir, root, tag, trust), run_dir, tag


def _load_model(run_dir: Path, root: Path, tag: str, trust: bool):
    model_cfg, _ = load_run_config(run_dir)
    state = consolidated_state_dict(root, tag, trust)
    vocab_size, _ = state["encoder.embeddings.word_embeddings.weight"].shape  # (V, H)
    pad_id = run_tokenizer(run_dir).pad_token_id
    model = build_model(model_cfg, vocab_size, pad_id)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise ExportError(
            f"{root / tag}: weights do not fit the run's model config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.eval()


def run_tokenizer(run_dir: Path):
    tok_dir = run_dir / "tokenizer"
    if not tok_dir.is_dir():
        raise ExportError(f"{tok_dir}: missing (train.py copies the data's tokenizer there)")
    try:
        return load_tokenizer(tok_dir, "run tokenizer")
    except (RemoteCodeError, OSError, ValueError) as e:
        raise ExportError(str(e)) from e


def write_sentence_transformers(out: Path, hidden_size: int, max_seq_length: int) -> None:
    """CLS pooling on top of the HF model in `out` (the files SentenceTransformer(out) reads)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    transformer = Transformer(str(out), max_seq_length=max_seq_length)
    pooling = Pooling(hidden_size, pooling_mode="cls")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(out))


def untrained_pooler(config, seed: int = 0) -> torch.nn.Module:
    """XLM-R's pooler (dense + tanh over CLS) at HF's initialisation (normal(0, initializer_range), zero bias), from a
    fixed seed: the stock XLMRobertaModel builds one, so the export carries it; MEXMA embeds with CLS, not with it."""
    from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaPooler

    pooler = XLMRobertaPooler(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pooler.dense.weight.copy_(torch.randn(pooler.dense.weight.shape, generator=gen) * config.initializer_range)
        pooler.dense.bias.zero_()
    return pooler


def _write_dir(out: Path, model, run_dir: Path, record: dict) -> None:
    """The HF + tokenizer + sentence-transformers files of `model` into `out` (a fresh directory)."""
    encoder = model.encoder
    encoder.config._attn_implementation = EXPORT_ATTENTION
    encoder.config.architectures = ["XLMRobertaModel"]
    if getattr(encoder, "pooler", None) is None:
        encoder.pooler = untrained_pooler(encoder.config)
    encoder.save_pretrained(str(out))  # model.safetensors (+ config.json)
    tokenizer = run_tokenizer(run_dir)
    tokenizer.save_pretrained(str(out))
    record.update(tokenizer_fingerprint=tokenizer_fingerprint(tokenizer), vocab_size=encoder.config.vocab_size)
    max_length = load_run_config(run_dir)[1]["data"]["max_length"]
    max_seq = min(max_length, encoder.config.max_position_embeddings - encoder.config.pad_token_id - 1)
    write_sentence_transformers(out, encoder.config.hidden_size, max_seq)
    (out / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")


def apply_umask(root: Path) -> None:
    """Give every file and directory under `root` the mode a plain open/mkdir would (0644 / 0755 under umask 022):
    some writers use private temp files (0600) renamed into place."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove `.OUT.tmpPID` / `.OUT.oldPID` siblings of OUT left by an export that was killed (its PID no longer
    runs); a live export's are left alone. -> the paths removed."""
    removed = []
    for path in out.parent.glob(f".{out.name}.*"):
        m = re.fullmatch(rf"\.{re.escape(out.name)}\.(?:tmp|old)(\d+)", path.name)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, left by an export that did not finish", path)
            removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished export `tmp` to `out`; an earlier export there is replaced only once the new one exists."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def export_checkpoint(
    src: str, out_dir: str, tag: str | None = None, trust: bool = False, allow_unverified: bool = False
) -> str:
    """Write the HF + sentence-transformers directory for `src` (run dir or checkpoint dir); returns out_dir.
    Every check comes before anything is written; the files go to a sibling temp dir renamed into place."""
    run_dir, root, tag = locate(src, tag, allow_unverified)
    out = Path(out_dir)
    check_output(out, run_dir)
    model = _load_model(run_dir, root, tag, trust)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    record = {"source": str(Path(src).resolve()), "checkpoint": tag, "pooling": "cls"}
    try:
        _write_dir(tmp, model, run_dir, record)
        apply_umask(tmp)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "exported %s (%s) to %s; sentence embedding: the CLS hidden state (the pooler is untrained)", run_dir, tag, out
    )
    return str(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.export",
        description="Export a MEXMA DeepSpeed checkpoint to a HF / sentence-transformers dir",
    )
    p.add_argument("src", help="training output dir (its newest verified checkpoint, or --tag) or one checkpoint dir")
    p.add_argument("out_dir", help="new output directory outside the run (XLMRobertaModel + tokenizer + ST config)")
    p.add_argument("--tag", help=f"with a run dir: {LATEST} (default), {BEST} (checkpoints/{BEST}) or step_NNNNNNNN")
    p.add_argument(ALLOW_FLAG, action="store_true", help="export a checkpoint that fails verification (warns)")
    p.add_argument(
        TRUST_FLAG,
        action="store_true",
        help="unpickle checkpoint files that need more than the weights-only unpickler (runs their code)",
    )
    args = p.parse_args(argv)
    apply_defaults()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        export_checkpoint(args.src, args.out_dir, args.tag, args.trust_checkpoint, args.allow_unverified)
    except ExportError as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
