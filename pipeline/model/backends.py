"""Which attention backend and which KoLeo path run, decided once at start-up; the model reads the result.

Every rule of the choice is here; pipeline/model/attention.py runs the name it is given.
- Names: "kernel" (the Triton block-diagonal kernel), "varlen" (FlashAttention's varlen kernel in torch, CUDA
  fp16/bf16), "sdpa" (padded PyTorch SDPA), "ref" (one dense fp32 softmax per sequence); "auto" before a choice.
- `resolve_backend`: "auto" is "varlen" on CUDA in fp16/bf16, else "sdpa" (an untested kernel is never the
  silent default); MEXMA_KERNELS=ref sends every call to "ref" (read at each call, so a user can bisect).
- `select_backends` (the trainer and bench_step call it once, on the run's device, dtype and batch shapes): on CUDA,
  "auto" checks the Triton kernel against the reference (pipeline/model/kernel_checks.py) and times it against the
  fallback; the kernel is kept only when it is right and not slower, for the encoder's and the head's (heads,
  head_dim) separately. The fused KoLeo is checked the same way. The report goes to the log and config.json.
- Query-subset layers (the encoder's last layer at the clean views' CLS rows, the head's last layer at the masked
  positions) have queries at a few rows and keys at every row; the Triton kernel is self-attention only, so
  there "kernel" runs "varlen" on CUDA in fp16/bf16 (head_dim a multiple of 8 up to 256) and "sdpa" elsewhere
  (`Backends.subset`).
- Attention dropout > 0 with "auto": "sdpa" while training (kernel and varlen have no dropout).
- KoLeo runs the fused kernel unless --kernels is off, attention is "ref", its start-up check failed, or
  MEXMA_KERNELS=ref (`Backends.koleo`); `kernels.koleo_loss` itself takes the reference off CUDA without the
  interpreter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from kernels import kernels_forced_ref
from pipeline.model.attention import varlen_supported
from pipeline.model.kernel_checks import check_attention_kernel, check_koleo_kernel, time_attention, time_koleo

log = logging.getLogger(__name__)
BACKENDS = ("auto", "kernel", "varlen", "sdpa", "ref")
STACKS = ("encoder", "head")


@dataclass(frozen=True)
class Backends:
    """The resolved choice: an attention backend per stack (encoder, head) and whether KoLeo may use its kernel."""

    encoder: str = "auto"
    head: str = "auto"
    koleo_kernel: bool = True
    dropout_to_sdpa: bool = False  # "auto" with attention dropout: sdpa while training

    @classmethod
    def from_config(cls, cfg) -> Backends:
        """The config's own names, before any start-up measurement (a ModelConfig or anything with its fields)."""
        return cls(
            encoder=cfg.attention,
            head=cfg.attention,
            koleo_kernel=bool(cfg.kernels) and cfg.attention != "ref",
            dropout_to_sdpa=cfg.attention == "auto" and cfg.attention_dropout > 0,
        )

    def attention(self, stack: str, device, dtype, training: bool) -> str:
        """The backend of one self-attention call of `stack` ("encoder" or "head")."""
        backend = resolve_backend(getattr(self, stack), device, dtype)
        if self.dropout_to_sdpa and training and backend != "sdpa":
            return "sdpa"
        return backend

    @staticmethod
    def subset(backend: str, device, dtype, head_dim: int) -> str:
        """The backend of a query-subset layer, given its stack's: "kernel" becomes varlen or sdpa (docstring)."""
        if backend != "kernel":
            return backend
        return "varlen" if varlen_supported(device, dtype, head_dim) else "sdpa"

    def koleo(self) -> bool:
        """Whether KoLeo calls the fused kernel (MEXMA_KERNELS=ref read now)."""
        return self.koleo_kernel and not kernels_forced_ref()


def select_backends(backends: Backends, cfg, device, dtype, lengths, heads: dict[str, int], hidden: int,
                    **injected) -> tuple[Backends, dict]:  # fmt: skip
    """Resolve "auto" per stack and guard the KoLeo kernel for this run -> (the resolved Backends, report).

    heads: {"encoder": n, "head": n} attention heads of each stack (head_dim = hidden // n); lengths: token counts
    of one step's sequences (4 views per pair; KoLeo sees len(lengths) // 4 rows). `injected` (check=, timer=,
    koleo_check=, koleo_timer=) replaces the measurements in tests.
    """
    device, report, chosen = torch.device(device), {}, {}
    koleo_kw = {k.removeprefix("koleo_"): v for k, v in injected.items() if k.startswith("koleo_")}
    attn_kw = {k: v for k, v in injected.items() if not k.startswith("koleo_")}
    for stack in STACKS:
        if cfg.attention == "auto":
            n = heads[stack]
            chosen[stack], report[stack] = select_backend(device, dtype, n, hidden // n, lengths, **attn_kw)
    use_kernel, report["koleo"] = select_koleo(device, dtype, max(2, len(lengths) // 4), hidden, **koleo_kw)
    return replace(backends, **chosen, koleo_kernel=backends.koleo_kernel and use_kernel), report


def resolve_backend(requested: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """Backend name for one call; "auto" -> varlen on CUDA in fp16/bf16, else sdpa (see the module docstring)."""
    if requested not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {requested!r}")
    if kernels_forced_ref() or requested == "ref":
        return "ref"
    if requested == "auto":
        return "varlen" if varlen_supported(device, dtype) else "sdpa"
    return requested


def _measure(what, fn, *args):
    """fn(*args), or {"ok": False, "error": ...} when it raises (a kernel that cannot compile is a failed check)."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - any failure of the candidate means: do not use it
        log.debug("%s raised", what, exc_info=True)
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def select_backend(device, dtype, n_heads, head_dim, lengths, check=None, timer=None) -> tuple[str, dict]:
    """Resolve attention="auto" for one (dtype, heads, head_dim) at start-up -> (backend name, report).

    On CUDA: `check` (default `check_attention_kernel`) runs the Triton kernel's forward and backward against
    the reference, `timer` (default `time_attention`) times it against the fallback ("varlen" where torch ships
    it for this dtype and head_dim, else "sdpa") on a batch of `lengths`. The kernel is chosen when it passes
    and is not slower; otherwise the fallback, with a warning that gives the error or the timing. Elsewhere:
    "sdpa" (CPU runs the kernel only under the interpreter). MEXMA_KERNELS=ref: "ref". The report (plain
    JSON types) says what was measured and why: log it and put it in the run's config.json.
    """
    device = torch.device(device)
    fallback = "varlen" if varlen_supported(device, dtype, head_dim) else "sdpa"
    report = {"dtype": str(dtype).removeprefix("torch."), "heads": n_heads, "head_dim": head_dim}
    report.update(tokens=int(sum(lengths)), seqs=len(lengths))
    if kernels_forced_ref():
        return "ref", {**report, "backend": "ref", "reason": "MEXMA_KERNELS=ref"}
    if device.type != "cuda":
        return "sdpa", {**report, "backend": "sdpa", "reason": f"no CUDA ({device.type}): padded SDPA"}
    report["check"] = _measure("attention check", check or check_attention_kernel, device, dtype, n_heads,
                               head_dim, lengths)  # fmt: skip
    if report["check"].get("ok"):
        report["ms"] = _measure("attention timing", timer or time_attention, device, dtype, n_heads, head_dim,
                                lengths, fallback)  # fmt: skip
    return _decide(report, "kernel", fallback, "attention")


def _error_text(check: dict) -> str:
    if isinstance(check.get("max_err"), float) and isinstance(check.get("tol"), float):
        return f"max error {check['max_err']:.3g} > tolerance {check['tol']:.3g}"
    return f"check returned {check}"


def _decide(report, kernel, fallback, what) -> tuple[str, dict]:
    """Kernel when its check passed and its timing is no slower than the fallback's; else the fallback, warned."""
    check, ms = report["check"], report.get("ms", {})
    if not check.get("ok"):
        why = check.get("error") or _error_text(check)
        reason = f"{what} kernel failed its check against the reference: {why}"
    elif "error" in ms:
        reason = f"{what} timing failed: {ms['error']}"
    elif ms[kernel] <= ms[fallback]:
        reason = f"{what} kernel right and not slower: {ms[kernel]:.3f} ms vs {fallback} {ms[fallback]:.3f} ms"
        log.info("%s backend: %s (%s)", what, kernel, reason)
        return kernel, {**report, "backend": kernel, "reason": reason}
    else:
        reason = f"{what} kernel slower: {ms[kernel]:.3f} ms vs {fallback} {ms[fallback]:.3f} ms (fwd+bwd)"
    log.warning("%s backend: %s, not the Triton kernel: %s", what, fallback, reason)
    return fallback, {**report, "backend": fallback, "reason": reason}


def select_koleo(device, dtype, batch, dim, check=None, timer=None) -> tuple[bool, dict]:
    """The fused KoLeo's start-up guard -> (use the kernel, report); same rules as `select_backend`.

    batch: rows per KoLeo call (pairs per micro batch, or the global batch with koleo_global); dim: hidden.
    Off CUDA it returns True and lets `kernels.koleo_loss` decide (the reference unless TRITON_INTERPRET=1).
    """
    device = torch.device(device)
    report = {"dtype": str(dtype).removeprefix("torch."), "rows": batch, "dim": dim}
    if kernels_forced_ref():
        return False, {**report, "backend": "ref", "reason": "MEXMA_KERNELS=ref"}
    if device.type != "cuda":
        return True, {**report, "backend": "koleo_loss", "reason": f"no CUDA ({device.type}): koleo_loss decides"}
    report["check"] = _measure("koleo check", check or check_koleo_kernel, device, dtype, batch, dim)
    if report["check"].get("ok"):
        report["ms"] = _measure("koleo timing", timer or time_koleo, device, dtype, batch, dim)
    name, report = _decide(report, "fused", "ref", "koleo")
    return name == "fused", report
