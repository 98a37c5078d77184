"""The one place that wraps the single-device model: activation checkpointing + `deepspeed.initialize`.

The optimizer is DeepSpeed's AdamW over the two parameter groups of `param_groups`; the lr follows a LambdaLR of
the run's `Schedule` (linear warmup from lr x warmup_start_factor, then cosine to lr x min_lr_ratio: torchvision's
LinearLR + CosineAnnealingLR as the reference used; DeepSpeed's WarmupCosineLR would spend the first step at lr 0).
"""

from __future__ import annotations

import deepspeed
import torch

from pipeline.training.schedule import Schedule, param_groups


def build_engine(cfg, model: torch.nn.Module, ds_config: dict, schedule: Schedule):
    """Activation checkpointing (if asked) + deepspeed.initialize with the schedule's LambdaLR -> engine."""
    if cfg.model.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    factors = schedule.factors(cfg.optim)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, cfg.optim.weight_decay),
        config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factors),
    )
    return engine


def run_dtype(ds_config: dict) -> torch.dtype:
    """The dtype the engine computes in: bf16 or fp16 when the DeepSpeed JSON enables it, else fp32."""
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.bfloat16 if ds_config.get("bf16", {}).get("enabled") else torch.float32
