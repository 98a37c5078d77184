"""Checkpoint files loaded without running code from them.

`torch.load(weights_only=False)` unpickles arbitrary objects, so a checkpoint received from someone else could run
code on resume, export or `python -m eval --model RUN`. `COMPLETE.json` is no protection: it sits beside the files
it certifies. Here every file is opened with torch's weights-only unpickler (tensors, containers, numbers, strings)
plus an allow-list of exactly the classes our checkpoints hold; a file that needs anything else is refused with an
`UnsafeCheckpointError` naming the file, the globals and `--trust-checkpoint`.

The allow-list, found with `torch.serialization.get_unsafe_globals_in_checkpoint` on checkpoints that DeepSpeed
0.19.8 saved with ZeRO-2 in fp32, bf16 and fp16 (the optimizer partitions `*zero_pp_rank_*_optim_states.pt`; the
module states `mp_rank_00_model_states.pt` need nothing beyond torch's defaults):

    deepspeed.runtime.fp16.loss_scaler.LossScaler           fp32 / bf16 (a static scale of 1)
    deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler    fp16
    deepspeed.runtime.zero.config.ZeroStageEnum             `zero_stage`
    deepspeed.utils.tensor_fragment.fragment_address        `param_slice_mappings`

Allow-listed classes are rebuilt from their pickled attributes without calling their code. Our own client state
(`client_rank*.pt`) needs nothing: numpy arrays (numpy's RNG state) are stored through `pack` as lists with their
dtype and shape, which round-trips exactly, and `unpack` restores them.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)
TRUST_FLAG = "--trust-checkpoint"
_ND = "__ndarray__"  # key of a packed numpy array: {"__ndarray__": nested list, "dtype": "<u4", "shape": [624]}


class SafeLoadError(ValueError):
    """A checkpoint file cannot be loaded safely; the message names the file and what to do."""


class UnsafeCheckpointError(SafeLoadError):
    """The file needs globals outside the weights-only allow-list: loading it could run code."""


def _deepspeed_globals() -> list:
    """The DeepSpeed classes of a ZeRO-2 checkpoint (see the module docstring); none when DeepSpeed is absent."""
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return []
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _refusal(path: Path, err: BaseException) -> SafeLoadError:
    """UnsafeCheckpointError naming the globals `path` needs beyond the allow-list, or a plain read error."""
    names = []
    if isinstance(err, pickle.UnpicklingError):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 (not a torch.save file at all: reported as unreadable below)
            names = []
    if not names:
        text = str(err).strip()
        reason = text.split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if text else type(err).__name__
        return SafeLoadError(f"{path}: unreadable checkpoint file ({type(err).__name__}: {reason})")
    return UnsafeCheckpointError(
        f"{path}: needs {', '.join(names)}, outside what the weights-only unpickler loads (unpickling it could run "
        f"code). Pass {TRUST_FLAG} only if you made this checkpoint yourself or trust where it came from"
    )


def _load_weights_only(path: Path, mmap: bool = False):
    with torch.serialization.safe_globals(_deepspeed_globals()):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as err:
            if mmap and "mmap" in str(err):  # a legacy (non-zip) file cannot be mapped: read it instead
                return torch.load(path, map_location="cpu", weights_only=True)
            raise


def check_weights_only(path: str | Path) -> None:
    """Raise SafeLoadError unless `path` loads with the weights-only unpickler and the allow-list.

    Cost: the file is loaded memory-mapped, so only the pickled object graph is read (a few KB to MB: names,
    shapes, counters), not the tensor bytes; for xlm-roberta-large's ~6.7 GB of optimizer partitions that is
    well under a second per file. Without mmap it would read and hold each file in memory once."""
    path = Path(path)
    try:
        _load_weights_only(path, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        raise _refusal(path, err) from err


def deepspeed_files(ckpt_dir: str | Path) -> list[Path]:
    """The .pt files DeepSpeed (or its converters) unpickles in one checkpoint dir: everything but our client
    state, searched recursively (a universal checkpoint keeps one folder per parameter)."""
    return sorted(p for p in Path(ckpt_dir).rglob("*.pt") if not p.name.startswith("client_rank"))


def check_deepspeed_files(ckpt_dir: str | Path, trust: bool) -> None:
    """Before DeepSpeed loads `ckpt_dir` (it unpickles with weights_only=False): every file must pass
    `check_weights_only`, unless `trust` (then a warning says what is skipped)."""
    if trust:
        log.warning("%s: loading %s without the weights-only check (%s)", ckpt_dir, "DeepSpeed files", TRUST_FLAG)
        return
    for path in deepspeed_files(ckpt_dir):
        check_weights_only(path)


def load_trusted(path: str | Path, trust: bool = False):
    """The object saved in `path` (numpy arrays stored by `pack` restored): weights-only with the allow-list, or,
    with `trust`, torch's full unpickler. Raises SafeLoadError naming the file and `--trust-checkpoint`."""
    path = Path(path)
    if trust:
        return unpack(torch.load(path, map_location="cpu", weights_only=False))
    try:
        return unpack(_load_weights_only(path))
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        raise _refusal(path, err) from err


def pack(obj):
    """`obj` with every numpy array / scalar replaced by {__ndarray__: list, dtype, shape} (weights-only loadable).
    Lists of Python ints / floats hold any integer or float array exactly (float32 -> float -> float32 is exact)."""
    if isinstance(obj, (np.ndarray, np.generic)):
        arr = np.asarray(obj)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"cannot store a numpy array of dtype {arr.dtype} in a checkpoint's client state")
        return {_ND: arr.tolist(), "dtype": arr.dtype.str, "shape": list(arr.shape)}
    if isinstance(obj, dict):
        return type(obj)((k, pack(v)) for k, v in obj.items())
    if type(obj) in (list, tuple):
        return type(obj)(pack(v) for v in obj)
    return obj


def unpack(obj):
    """The inverse of `pack` (a packed 0-d value comes back as a numpy scalar)."""
    if isinstance(obj, dict):
        if _ND in obj:
            arr = np.array(obj[_ND], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
            return arr[()] if arr.ndim == 0 else arr
        return type(obj)((k, unpack(v)) for k, v in obj.items())
    if type(obj) in (list, tuple):
        return type(obj)(unpack(v) for v in obj)
    return obj
