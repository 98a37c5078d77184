"""Files received from elsewhere never run code: tokenizers, model directories, export directories.

transformers follows an `auto_map` entry of `config.json` / `tokenizer_config.json` (and the processor configs) to a
Python file beside it, and asks "run the custom code? [y/N]" on a terminal (an EOFError without one) unless
`trust_remote_code` is given. Every tokenizer / model / config this project loads goes through `load_tokenizer` /
`check_dir` here: a directory whose JSON declares `auto_map` (or a sentence-transformers module outside the library)
is refused with `RemoteCodeError` naming the file and the key, and transformers always gets
`trust_remote_code=False`, so no prompt can appear and no file runs, also for hub names resolved from the cache.
The tokenizer fingerprint (`tokenizer_fingerprint`) identifies a vocabulary by content, for exports to record and
evaluation to check.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# The JSON files transformers reads when it loads a model, tokenizer or processor from a directory.
CONFIG_FILES = (
    "config.json",
    "tokenizer_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "feature_extractor_config.json",
    "image_processor_config.json",
    "generation_config.json",
)
CODE_KEYS = ("auto_map", "custom_pipelines")


class RemoteCodeError(ValueError):
    """A received file asks to run code; the message names the file and the key."""


def check_dir(path: str | Path, flag: str) -> None:
    """Raise RemoteCodeError when a local directory's configs declare code to run (`auto_map`, `custom_pipelines`)
    or its sentence-transformers modules.json names a module outside sentence_transformers. A hub name (no local
    directory) is left to `trust_remote_code=False`."""
    root = Path(path)
    if not root.is_dir():
        return
    for name in CONFIG_FILES:
        data = _json(root / name)
        keys = [k for k in CODE_KEYS if isinstance(data, dict) and data.get(k)]
        if keys:
            raise RemoteCodeError(
                f"{flag} {path}: {root / name} declares {keys[0]!r}, which asks to run Python code shipped with the "
                "files; received files never run code here. Remove the key (and the .py files it names) or use a "
                "model / tokenizer without custom code"
            )
    modules = _json(root / "modules.json")
    for module in modules if isinstance(modules, list) else []:
        kind = module.get("type", "") if isinstance(module, dict) else ""
        if kind and not kind.startswith("sentence_transformers."):
            raise RemoteCodeError(
                f"{flag} {path}: {root / 'modules.json'} names the module {kind!r} outside sentence_transformers, "
                "which would import code shipped with the files; received files never run code here"
            )


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent or unreadable: transformers reports what is wrong when it reads it


def load_tokenizer(source: str | Path, flag: str):
    """AutoTokenizer.from_pretrained(source) after `check_dir`, never running or prompting for custom code."""
    from transformers import AutoTokenizer

    check_dir(source, flag)
    return AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the token -> id map (every id the tokenizer can produce): the same for a copy saved elsewhere,
    different for another vocabulary."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
