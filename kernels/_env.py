"""The one `MEXMA_KERNELS=ref` switch: kernels/ and pipeline/ both ask here."""

import os


def kernels_forced_ref() -> bool:
    """True when MEXMA_KERNELS=ref: every kernel call (attention, KoLeo) goes to its PyTorch reference."""
    return os.environ.get("MEXMA_KERNELS", "").strip().lower() == "ref"
