"""`pipeline.bench_step`'s `packed-ds` variant: the step exactly as training runs it.

The packed `MexmaModel` wrapped by the trainer's own `build_engine` with the shipped DeepSpeed JSON: on GPUs
`ds_configs/zero2_bf16.json` (bf16 weights and activations, fp32 master weights, gradients reduced and accumulated
in fp32, torch's fused AdamW, clipping at 1.2), on CPUs `ds_configs/zero2_cpu_fp32.json`; one rank, one micro batch
per step (the benchmark's pairs), `engine(**batch)`, `engine.backward`, `engine.step`. Its MFU is the training's;
the `packed` and `padded` variants run torch AdamW under bf16 autocast over fp32 weights (the original's AMP).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"bf16": ROOT / "ds_configs" / "zero2_bf16.json", "fp32": ROOT / "ds_configs" / "zero2_cpu_fp32.json"}


def ds_step(model, dtype: str, pairs: int):
    """A 1-rank group and the training engine around `model` -> step(batch) -> loss (one optimizer step)."""
    from pipeline.config import load_ds_config, parse_args, resolve_ds_config
    from pipeline.training.engine import build_engine
    from pipeline.training.schedule import Schedule
    from runtime.collectives import init_training

    init_training(timeout_minutes=10)
    path = str(CONFIGS[dtype])
    flags = ["--data", "-", "--output-dir", "-", "--ds-config", path, "--batch-pairs", str(pairs), "--grad-accum", "1"]
    cfg = parse_args(flags)
    engine = build_engine(cfg, model, resolve_ds_config(cfg, load_ds_config(path), world_size=1), Schedule(10**6))

    def step(batch: dict):
        loss = engine(**batch)["loss"]
        engine.backward(loss)
        engine.step()
        return loss

    return step
