"""Hub names without a network: detected up front, in one line, instead of transformers' retry storm.

`from_pretrained("xlm-roberta-large")` on a machine without network retries for about 50 s and prints dozens of
warnings before it fails. `check_hub_name` answers at once: a local path passes, a hub name passes only when the
model is in the local Hugging Face cache or the hub answers a TCP connection within a second; otherwise it raises
`HubUnreachableError` naming the flag and the offline alternatives.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PROBE_TIMEOUT_S = 1.0


class HubUnreachableError(ValueError):
    """A hub name was given, it is not cached, and the hub cannot be reached; the message names the flag."""


def offline_forced() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARS)


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """A TCP connection to the hub endpoint (HF_ENDPOINT, default huggingface.co:443) within `timeout`."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def cached(name: str) -> bool:
    """The model or tokenizer `name` has a config in the local Hugging Face cache (loadable offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for filename in ("config.json", "tokenizer_config.json"):
        try:
            if isinstance(try_to_load_from_cache(name, filename), str):
                return True
        except ValueError:  # not a valid repo id
            return False
    return False


def check_hub_name(name: str, flag: str, alternatives: str) -> None:
    """Raise HubUnreachableError when `name` (the value of `flag`) is neither a local path nor loadable from the hub
    or its cache. `alternatives` says what to pass instead (it ends the one-line message)."""
    if Path(name).expanduser().exists() or cached(name):
        return
    if offline_forced():
        why = f"{' / '.join(v for v in OFFLINE_VARS if os.environ.get(v))} is set"
    elif hub_reachable():
        return
    else:
        why = "the Hugging Face hub is unreachable (no network)"
    raise HubUnreachableError(f"{flag} {name}: no such local path, and {why}. Offline: {alternatives}")
