"""Environment defaults every entry point applies to itself, so a bare command behaves as the Makefile's targets.

`apply_defaults()` sets, where the user has not:
- TORCH_EXTENSIONS_DIR: DeepSpeed's JIT-built CPU op (about 30 s to build) lives in the active venv
  (`<venv>/torch_extensions`, where `make setup` builds it) or, outside a venv, in the project's `.cache/`; never in
  `~/.cache`, where every new clone would build it again;
- TOKENIZERS_PARALLELISM=false: the Rust tokenizer's threads and forked workers do not mix (and the warning about it);
- WANDB_MODE=offline: no run tries the network unless asked (`wandb sync` uploads later);
- HF_HUB_DISABLE_PROGRESS_BARS=1: no progress bar of the Hugging Face libraries (transformers' "Loading weights"
  of every model load) in a console whose progress lines are the command's own;
- PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (unless PYTORCH_CUDA_ALLOC_CONF or its newer name
  PYTORCH_ALLOC_CONF is set): packed batches change their token count every step, and fixed-size cached
  segments fragment under that; expandable segments grow and shrink in place. Read at the first CUDA allocation.

Call it before importing DeepSpeed, tokenizers or wandb (the values are read at import or first use).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def extensions_dir() -> Path:
    """`<venv>/torch_extensions` inside a venv, else `<project>/.cache/torch_extensions`."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "torch_extensions"
    return PROJECT_ROOT / ".cache" / "torch_extensions"


def defaults() -> dict[str, str]:
    return {
        "TORCH_EXTENSIONS_DIR": str(extensions_dir()),
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "offline",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }


def apply_defaults() -> None:
    """Set each default the environment does not set already (a user's value always wins)."""
    for key, value in defaults().items():
        os.environ.setdefault(key, value)
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":  # libraries imported already read the variable before this
        hub = sys.modules.get("huggingface_hub.utils")
        if hub is not None:
            hub.disable_progress_bars()  # transformers imported later reads this state
        logging_module = sys.modules.get("transformers.utils.logging")
        if logging_module is not None:
            logging_module.disable_progress_bar()
    if "PYTORCH_ALLOC_CONF" not in os.environ:
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
