"""Tokenizers for the prepared directory: a pretrained HF tokenizer, or a SentencePiece-Unigram one
trained here with the `tokenizers` library.

A trained tokenizer has XLM-R's layout: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, the learned pieces,
and `<mask>` = vocab_size - 1 (XLM-R's `<mask>` is its last id too). It is saved as a
`transformers.XLMRobertaTokenizer`, so `AutoTokenizer.from_pretrained(DIR/tokenizer)` gives the same
pre-tokenisation (whitespace split + Metaspace "▁") and the `<s> ... </s>` template. Text reaches it
already NFC-normalised by the cleaner, so no normaliser is added (and none would survive
`XLMRobertaTokenizer`'s reload from its vocabulary).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

XLMR_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3; "<mask>" is appended last
# EM schedule: keep half the pieces per pruning round with one EM sub-iteration (library: 0.75, 2).
# Measured on 50k catalogue sentences, 12k ids, 2 busy cores: 52 s -> 21 s (quality not compared).
SHRINKING_FACTOR = 0.5
N_SUB_ITERATIONS = 1
_SPECIAL_ATTRS = {
    "bos": "bos_token_id",
    "pad": "pad_token_id",
    "eos": "eos_token_id",
    "unk": "unk_token_id",
    "mask": "mask_token_id",
}


@dataclass
class TokenizerInfo:
    """What the manifest records about the tokenizer (`manifest.tokenizer`)."""

    name: str
    sha256: str
    vocab_size: int
    special_ids: dict[str, int]
    backend: str = field(default="", repr=False)
    """The `tokenizers` JSON as AutoTokenizer builds it (sent to the encode workers; not in the manifest)."""
    sample: dict[str, int] | None = None
    """Pairs per language pair in the training sample of a trained tokenizer (--tokenizer-alpha)."""

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "backend" and (k != "sample" or v is not None)}


def train_unigram(texts: Iterator[str], vocab_size: int, out_dir: Path, show_progress: bool = False) -> TokenizerInfo:
    """Train a Unigram model of `vocab_size` ids (specials included) and save it to `out_dir`."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import Unigram
    from tokenizers.trainers import UnigramTrainer
    from transformers import XLMRobertaTokenizer

    if vocab_size < len(XLMR_SPECIALS) + 2:
        raise ValueError(f"--train-tokenizer {vocab_size}: need at least {len(XLMR_SPECIALS) + 2} ids")
    tok = Tokenizer(Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = UnigramTrainer(
        vocab_size=vocab_size - 1,
        special_tokens=list(XLMR_SPECIALS),
        unk_token="<unk>",
        show_progress=show_progress,
        shrinking_factor=SHRINKING_FACTOR,
        n_sub_iterations=N_SUB_ITERATIONS,
    )
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # EM on all cores; encode workers are spawned, not forked
    try:
        tok.train_from_iterator(texts, trainer)
    except Exception as e:  # the Rust trainer raises a bare Exception
        if "not large enough to contain all chars" in str(e):
            raise ValueError(f"--train-tokenizer {vocab_size}: fewer ids than distinct characters in the text") from e
        raise
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM")
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    vocab = [(piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    n_special = len(XLMR_SPECIALS)
    if [p for p, _ in vocab[:n_special]] != list(XLMR_SPECIALS):
        raise RuntimeError(f"unigram trainer put specials at {vocab[:4]}, expected {XLMR_SPECIALS} first")
    vocab = vocab[:n_special] + canonical_pieces(vocab[n_special:])
    hf = XLMRobertaTokenizer(vocab=[*vocab, ("<mask>", 0.0)])
    hf.save_pretrained(str(out_dir))
    return describe(out_dir, name=f"trained-unigram-{len(vocab) + 1}")


REQUIRED_CHAR_STEP = 1e-4  # the trainer's score decrement between the required characters it appends


def canonical_pieces(pieces: list[tuple[str, float]], decimals: int = 8) -> list[tuple[str, float]]:
    """Scores rounded and pieces sorted by (score desc, piece): the trainer sums in HashMap order (random
    per process), which moves scores in the 15th digit and reorders equal-score pieces between runs.

    The trainer also appends the characters of the text that no learned piece covers, walking a HashSet (random
    order per process): a run of single characters 1e-4 apart, then single characters at one lower score. Which
    character gets which score (and id) changes from run to run, the set does not. That block is sorted by character
    and given the same scores in order, so a rerun on the same text yields the same file (same ids)."""
    rounded = [(piece, round(score, decimals)) for piece, score in pieces]
    ordered = sorted(rounded, key=lambda ps: (-ps[1], ps[0]))
    tol = 10.0 ** (2 - decimals)
    step = lambda k: (  # noqa: E731 - ordered[k] follows ordered[k - 1] as the trainer's next required character
        len(ordered[k][0]) == 1
        and len(ordered[k - 1][0]) == 1
        and abs(ordered[k - 1][1] - ordered[k][1] - REQUIRED_CHAR_STEP) <= tol
    )
    k = 1
    while k < len(ordered):
        if not step(k):
            k += 1
            continue
        start, end = k - 1, k + 1  # a run of single characters one step apart: ordered[start:end]
        while end < len(ordered) and step(end):
            end += 1
        if end - start >= 3:  # learned pieces never fall exactly 1e-4 apart three times in a row
            while end < len(ordered) and len(ordered[end][0]) == 1:  # + the equal-score characters set after it
                end += 1
            scores = [score for _, score in ordered[start:end]]
            ordered[start:end] = zip(sorted(piece for piece, _ in ordered[start:end]), scores)
        k = end
    return ordered


def save_pretrained_copy(name_or_path: str, out_dir: Path) -> TokenizerInfo:
    """Load a pretrained (fast) tokenizer by path or hub name and save a copy into `out_dir`."""
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise ValueError(f"--tokenizer {name_or_path}: cannot load ({e})") from None
    if not hasattr(hf, "backend_tokenizer"):
        raise ValueError(f"--tokenizer {name_or_path}: not backed by the `tokenizers` library (no fast tokenizer)")
    hf.save_pretrained(str(out_dir))
    return describe(out_dir, name=name_or_path)


def describe(tok_dir: Path, name: str) -> TokenizerInfo:
    """Reload `tok_dir` as a user will (AutoTokenizer) and read its size, special ids and file hash."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    special = {k: getattr(hf, attr) for k, attr in _SPECIAL_ATTRS.items()}
    missing = [k for k, v in special.items() if v is None]
    if missing:
        raise ValueError(f"tokenizer {name}: no {missing} token; MEXMA needs <s>, <pad>, </s>, <unk>, <mask>")
    return TokenizerInfo(name, dir_sha256(tok_dir), len(hf), special, hf.backend_tokenizer.to_str())


def backend_json(tok_dir: Path) -> str:
    """The `tokenizers` JSON of the tokenizer exactly as AutoTokenizer builds it (sent to worker processes)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir)).backend_tokenizer.to_str()


def dir_sha256(folder: Path) -> str:
    """sha256 over (relative name, content) of every file in `folder`, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()
