"""The optimisation recipe: class weights, the optimiser, the learning-rate schedule, gradient
accumulation windows and the mixed-precision policy (autocast dtype and gradient scaler)."""
from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
CLASS_WEIGHTS = ("none", "median_freq", "inverse_freq", "enet")
AMP_DTYPES = ("auto", "bfloat16", "float16")


def class_weights_from_counts(counts: list[int], rule: str) -> torch.Tensor | None:
    """median_freq: median(f) / f_c (Eigen and Fergus); inverse_freq: 1 / f_c, scaled to mean 1;
    enet: 1 / ln(1.02 + f_c) (Paszke et al., ENet), which bounds the weights (at most ~50) and spreads
    them less than median_freq (on CamVid 13x from the most to the least frequent class, against 110x).

    Classes with no pixels get weight 0 (nothing to learn from them).
    """
    if rule == "none":
        return None
    counts_t = torch.tensor(counts, dtype=torch.float64)
    present = counts_t > 0
    freq = counts_t / counts_t.sum()
    weights = torch.zeros_like(freq)
    if rule == "median_freq":
        # quantile, not median(): with an even number of classes torch's median is the lower middle value
        weights[present] = freq[present].quantile(0.5) / freq[present]
    elif rule == "enet":
        weights[present] = 1 / torch.log(1.02 + freq[present])
    else:
        weights[present] = 1 / freq[present]
        weights[present] /= weights[present].mean()
    return weights.float()


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, power: float) -> float:
    """Linear warmup from 0, then polynomial decay to 0."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * max(0.0, 1 - progress) ** power


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    # No weight decay on biases and norm layers, as is usual for segmentation networks.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))



def autocast_settings(device: torch.device, amp: bool, amp_dtype: str = "auto"):
    """(dtype or None, needs GradScaler).

    auto: bf16 on GPUs that have it, else fp16 with a gradient scaler; off on CPUs (slower there on
    most). bfloat16 or float16 force that autocast on any device (float16 always with a scaler).
    """
    if not amp or (amp_dtype == "auto" and device.type != "cuda"):
        return None, False
    if amp_dtype == "auto":
        amp_dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if amp_dtype == "bfloat16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"amp_dtype bfloat16: {torch.cuda.get_device_name(device)} does not support bf16; "
                              f"set amp_dtype auto or float16")
        return torch.bfloat16, False
    return torch.float16, True


def make_scaler(device: torch.device, amp: bool, amp_dtype: str = "auto") -> torch.amp.GradScaler:
    """The gradient scaler, enabled where fp16 needs it (small gradients would flush to zero); a disabled
    one passes the loss and the step through unchanged, so the loop has one path."""
    return torch.amp.GradScaler(device.type, enabled=autocast_settings(device, amp, amp_dtype)[1])


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile; on CPUs with inductor's NHWC layout choice off.

    That choice reaches a oneDNN crash (segfault; torch 2.11 and 2.13 on CPUs) in the backward of strided 1x1
    convolutions with few channels, e.g. the residual UNet at width 8.
    """
    if device.type == "cpu":
        import torch._inductor.config as inductor_config

        inductor_config.layout_optimization = False
    return torch.compile(model)


def optimizer_steps_per_epoch(steps_per_epoch: int, accum: int) -> int:
    """Accumulation windows never span two epochs: the last one of an epoch may hold fewer batches."""
    return -(-steps_per_epoch // accum)


def accumulation_window(epoch: int, step_in_epoch: int, steps_per_epoch: int, accum: int) -> tuple[int, int, bool]:
    """For a batch: (the optimiser step it counts towards, from the run's start; the number of batches
    of its window, by which its loss is divided; whether it is the window's last, which steps).

    Windows restart with each epoch, so that an epoch ends with nothing half-accumulated: its last
    window steps on the batches left (all of them when grad_accum exceeds an epoch's batches), and a
    checkpoint at an epoch's end holds every gradient taken.
    """
    start = step_in_epoch // accum * accum
    window = min(accum, steps_per_epoch - start)
    step = epoch * optimizer_steps_per_epoch(steps_per_epoch, accum) + step_in_epoch // accum
    return step, window, step_in_epoch + 1 == start + window


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Step through the gradient scaler (a plain step when it is disabled) and clear the gradients."""
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
