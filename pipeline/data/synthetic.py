"""A small prepared dataset made on the spot, without data_prep or a download: tests and the golden-loss run.

A synthetic "language pair": word i of the source vocabulary always translates to word perm(i) of the target
vocabulary, same order; tokenised with a word-level tokenizer trained on the spot with XLM-R's special ids
(<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> last), saved as data_prep saves it (save_to_disk shards + a manifest with
each shard's rows and sha256). Everything is a function of the arguments: the same call writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def word_tokenizer(words: list[str], out: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        [" ".join(words)], trainers.WordLevelTrainer(special_tokens=["<s>", "<pad>", "</s>", "<unk>"], min_frequency=1)
    )
    tok.add_special_tokens(["<mask>"])  # appended last: <mask> = vocab_size - 1, as XLM-R
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
    )
    fast.save_pretrained(str(out))
    return fast


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_prepared(root: Path, n_train: int = 256, n_valid: int = 48, seed: int = 0, train_shards: int = 2) -> Path:
    """Write a prepared dataset directory (train/, valid/, tokenizer/, manifest.json) under root."""
    import datasets

    rng = np.random.default_rng(seed)
    n_words = 40
    src_words = [f"s{i}" for i in range(n_words)]
    perm = rng.permutation(n_words)
    tok = word_tokenizer(src_words + [f"t{i}" for i in range(n_words)], root / "tokenizer")

    def pairs(n):
        rows = {"src_ids": [], "trg_ids": [], "src_lang": [], "trg_lang": []}
        for _ in range(n):
            ws = rng.integers(0, n_words, size=int(rng.integers(2, 12)))
            rows["src_ids"].append(tok(" ".join(f"s{w}" for w in ws))["input_ids"])
            rows["trg_ids"].append(tok(" ".join(f"t{perm[w]}" for w in ws))["input_ids"])
            rows["src_lang"].append("fra_Latn")
            rows["trg_lang"].append("eng_Latn")
        return rows

    shards = []
    for split, n, n_shards in (("train", n_train, train_shards), ("valid", n_valid, 1)):
        ds = datasets.Dataset.from_dict(
            pairs(n),
            features=datasets.Features(
                {
                    "src_ids": datasets.List(datasets.Value("int32")),
                    "trg_ids": datasets.List(datasets.Value("int32")),
                    "src_lang": datasets.Value("string"),
                    "trg_lang": datasets.Value("string"),
                }
            ),
        )
        ds.save_to_disk(str(root / split), num_shards=n_shards)
        for path in sorted((root / split).glob("*.arrow")):
            rows = len(datasets.Dataset.from_file(str(path)))
            shards.append(
                {"split": split, "file": path.relative_to(root).as_posix(), "rows": rows, "sha256": sha256_file(path)}
            )
    vocab = len(tok)
    manifest = {
        "tokenizer": {
            "name": "test-wordlevel",
            "sha256": sha256_file(root / "tokenizer" / "tokenizer.json"),
            "vocab_size": vocab,
            "special_ids": {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": vocab - 1},
        },
        "counts": {"read": n_train + n_valid, "kept": n_train + n_valid, "skipped": {}},
        "shards": shards,
        "max_tokens": 200,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root
