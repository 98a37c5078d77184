"""DeepSpeed checkpoint -> Hugging Face directory (XLMRobertaModel + tokenizer) loadable by sentence-transformers.

    python -m pipeline.export CHECKPOINT_OR_RUN_DIR OUT_DIR

CHECKPOINT_OR_RUN_DIR: a training output directory (its newest checkpoint that verifies is used) or one checkpoint
directory (OUTPUT/checkpoints/step_NNNNNNNN). The weights are consolidated with DeepSpeed's zero_to_fp32 (the fp32
master weights of every ZeRO partition: exact for bf16 runs too), loaded into the model that `build_model` makes from
the run's config.json, and `model.encoder.save_pretrained(OUT_DIR)` writes them under the stock HF names. OUT_DIR also
gets the run's tokenizer and the sentence-transformers files (modules.json, sentence_bert_config.json,
config_sentence_transformers.json, 1_Pooling/config.json with CLS pooling), so both
`XLMRobertaModel.from_pretrained(OUT_DIR)` (the seed README's usage) and `SentenceTransformer(OUT_DIR)` load it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch

from pipeline.checkpoint import COMPLETE, LATEST, CheckpointManager
from pipeline.model import ModelConfig, build_model

log = logging.getLogger(__name__)
EXPORT_ATTENTION = "sdpa"  # what the exported config names: stock PyTorch attention, no import of ours needed


class ExportError(RuntimeError):
    """The source is not a usable checkpoint; the message names the path."""


def locate(src: str | Path) -> tuple[Path, Path, str]:
    """-> (run dir, checkpoints root, tag) for a run dir or one checkpoint dir."""
    src = Path(src)
    if (src / "checkpoints").is_dir():
        run_dir, root = src, src / "checkpoints"
        tag = CheckpointManager(run_dir, verify="size").find_resume()
        if tag is None:
            raise ExportError(f"{root}: no complete checkpoint (nothing with a valid {COMPLETE})")
        return run_dir, root, tag
    if (src / "mp_rank_00_model_states.pt").is_file():
        reason = CheckpointManager(src.parent.parent, verify="size").verify(src.name)
        if reason is not None and (src / COMPLETE).exists():
            raise ExportError(f"{src}: {reason}")
        return src.parent.parent, src.parent, src.name
    raise ExportError(
        f"{src}: neither a training output dir (with checkpoints/) nor a checkpoint dir "
        "(with mp_rank_00_model_states.pt)"
    )


def load_run_config(run_dir: Path) -> tuple[ModelConfig, dict]:
    path = run_dir / "config.json"
    if not path.is_file():
        raise ExportError(f"{path}: missing (the run's resolved config, written by pipeline/train.py)")
    cfg = json.loads(path.read_text())
    model_cfg = dataclasses.replace(ModelConfig.from_dict(cfg["model"]), gradient_checkpointing=False)
    return model_cfg, cfg


def consolidated_state_dict(root: Path, tag: str) -> dict[str, torch.Tensor]:
    """fp32 module weights from the ZeRO partitions (DeepSpeed's zero_to_fp32), keyed like model.state_dict()."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_trained_model(src: str | Path):
    """-> (MexmaModel with the checkpoint's weights, in eval mode, run dir, tag)."""
    run_dir, root, tag = locate(src)
    model_cfg, _ = load_run_config(run_dir)
    state = consolidated_state_dict(root, tag)
    vocab_size, _ = state["encoder.embeddings.word_embeddings.weight"].shape  # (V, H)
    pad_id = run_tokenizer(run_dir).pad_token_id
    model = build_model(model_cfg, vocab_size, pad_id)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise ExportError(
            f"{root / tag}: weights do not fit the run's model config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.eval(), run_dir, tag


def run_tokenizer(run_dir: Path):
    tok_dir = run_dir / "tokenizer"
    if not tok_dir.is_dir():
        raise ExportError(f"{tok_dir}: missing (train.py copies the data's tokenizer there)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir))


def write_sentence_transformers(out: Path, hidden_size: int, max_seq_length: int) -> None:
    """CLS pooling on top of the HF model in `out` (the files SentenceTransformer(out) reads)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    transformer = Transformer(str(out), max_seq_length=max_seq_length)
    pooling = Pooling(hidden_size, pooling_mode="cls")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(out))


def export_checkpoint(src: str, out_dir: str) -> str:
    """Write the HF + sentence-transformers directory for `src` (run dir or checkpoint dir); returns out_dir."""
    model, run_dir, tag = load_trained_model(src)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = model.encoder
    encoder.config._attn_implementation = EXPORT_ATTENTION
    encoder.config.architectures = ["XLMRobertaModel"]
    encoder.save_pretrained(str(out))
    run_tokenizer(run_dir).save_pretrained(str(out))
    max_length = json.loads((run_dir / "config.json").read_text())["data"]["max_length"]
    max_seq = min(max_length, encoder.config.max_position_embeddings - encoder.config.pad_token_id - 1)
    write_sentence_transformers(out, encoder.config.hidden_size, max_seq)
    (out / "mexma_export.json").write_text(
        json.dumps({"source": str(Path(src).resolve()), "checkpoint": tag, "pooling": "cls"}, indent=2) + "\n"
    )
    log.info("exported %s (%s) to %s", run_dir, tag, out)
    return str(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Export a MEXMA DeepSpeed checkpoint to a HF / sentence-transformers dir")
    p.add_argument("src", help=f"training output dir (uses checkpoints/{LATEST}, verified) or one checkpoint dir")
    p.add_argument("out_dir", help="output directory (XLMRobertaModel + tokenizer + sentence-transformers config)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        export_checkpoint(args.src, args.out_dir)
    except ExportError as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
