"""Shared fixtures of the training tests: one tiny prepared dataset (contract 1) and one finished 1-rank run.

The dataset is a synthetic "language pair" (word i of the source vocabulary always translates to word
perm(i) of the target vocabulary, same order), tokenised with a word-level tokenizer trained on the spot with
XLM-R's special ids, saved as data_prep saves it (save_to_disk shards + manifest with sha256).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
# A model small enough for seconds-long CPU runs; flags of pipeline/config.py (ModelConfig fields).
TINY_MODEL_FLAGS = [
    "--model",
    "tiny",
    "--num-layers",
    "2",
    "--hidden-size",
    "64",
    "--num-heads",
    "2",
    "--ffn-size",
    "128",
    "--head-layers",
    "1",
    "--head-heads",
    "2",
    "--head-ffn",
    "128",
]


def _tokenizer(words: list[str], out: Path):
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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_prepared(root: Path, n_train: int = 256, n_valid: int = 48, seed: int = 0, train_shards: int = 2) -> Path:
    """Write a prepared dataset directory (train/, valid/, tokenizer/, manifest.json) under root."""
    import datasets

    rng = np.random.default_rng(seed)
    n_words = 40
    src_words = [f"s{i}" for i in range(n_words)]
    perm = rng.permutation(n_words)
    tok = _tokenizer(src_words + [f"t{i}" for i in range(n_words)], root / "tokenizer")

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
                {"split": split, "file": path.relative_to(root).as_posix(), "rows": rows, "sha256": _sha256(path)}
            )
    vocab = len(tok)
    manifest = {
        "tokenizer": {
            "name": "test-wordlevel",
            "sha256": _sha256(root / "tokenizer" / "tokenizer.json"),
            "vocab_size": vocab,
            "special_ids": {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": vocab - 1},
        },
        "counts": {"read": n_train + n_valid, "kept": n_train + n_valid, "skipped": {}},
        "shards": shards,
        "max_tokens": 200,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


def train_cmd(data: Path, out: Path, *extra: str, launcher: list[str] | None = None) -> list[str]:
    """Command line of a tiny CPU run (plain python unless a launcher prefix is given)."""
    args = [
        "--data",
        str(data),
        "--output-dir",
        str(out),
        "--ds-config",
        str(ROOT / "ds_configs/zero2_cpu_fp32.json"),
        "--batch-pairs",
        "8",
        "--grad-accum",
        "1",
        "--wandb",
        "off",
        "--log-every",
        "1",
        "--verify",
        "size",
        *TINY_MODEL_FLAGS,
        *extra,
    ]
    return (launcher or [sys.executable]) + [str(ROOT / "pipeline/train.py"), *args]


def free_port() -> int:
    """A free TCP port for a launcher's --master_port (fixed ports collide with parallel runs)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_launcher(n: int = 2) -> list[str]:
    return [str(ROOT / ".venv/bin/deepspeed"), "--num_gpus", str(n), "--master_port", str(free_port())]


def run_env() -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        DS_ACCELERATOR="cpu",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        WANDB_MODE="disabled",
    )
    # TRITON_INTERPRET (set by `make test` for tests/kernels) would send KoLeo through the Triton interpreter inside
    # every training step; a CPU training run never has it, and the kernels are tested on their own.
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TRITON_INTERPRET"):
        env.pop(key, None)
    return env


def run_train(cmd: list[str], timeout: int = 300, check: bool = True, **env) -> subprocess.CompletedProcess:
    """Run a training command to the end (extra keyword arguments are environment variables)."""
    proc = subprocess.run(cmd, cwd=ROOT, env={**run_env(), **env}, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """A tiny prepared dataset directory shared by every pipeline test (treat as read-only; copy to modify)."""
    return make_prepared(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="session")
def tiny_run(prepared, tmp_path_factory) -> Path:
    """A finished 8-step 1-rank run, checkpoint every 2 steps (the reference of resume and export tests)."""
    out = tmp_path_factory.mktemp("run") / "uninterrupted"
    run_train(train_cmd(prepared, out, "--max-steps", "8", "--save-every", "2", "--valid-every", "4"))
    return out
