"""The machine, described and measured: the device, its cores and memory, and a few seconds of
training steps of each candidate network and precision on this very device (a CPU without bf16
units runs bf16 slower than fp32; measure, do not assume), the data loader's pace per worker, and
the cost of validating one full-size image."""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from ..models import build_model
from ..training.loops import compute_loss
from ..training.losses import build_loss
from ..training.optim import make_scaler, optimizer_step

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def describe(device: torch.device) -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    facts = {"device": device.type, "name": "cpu", "cores": cores, "memory_bytes": None, "bf16": None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(name=props.name, memory_bytes=int(props.total_memory), bf16=bool(torch.cuda.is_bf16_supported()))
    else:
        facts["name"] = f"cpu ({torch.backends.cpu.get_cpu_capability()})"
    return facts


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_speed(model_name: str, options: dict, num_classes: int, crop: int, batch: int, device: torch.device,
               precision: str, seconds: float = 2.0, max_steps: int = 6) -> dict:
    """Training steps (forward, loss, backward, AdamW) of a fresh model on random data: images/s after
    one warm-up step, timed over at least two steps and about `seconds`; peak memory on CUDA."""
    torch.manual_seed(0)
    model = build_model(model_name, num_classes, pretrained=False, **options).to(device).train()
    images = torch.randn(batch, 3, crop, crop, device=device)
    masks = torch.randint(0, num_classes, (batch, crop, crop), device=device)
    criterion = build_loss("ce").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = PRECISIONS[precision]
    scaler = make_scaler(device, dtype is not None, precision if dtype is not None else "auto")
    aux = getattr(model, "aux_weights", {})

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = compute_loss(model(images), masks, criterion, aux)
        scaler.scale(loss).backward()
        optimizer_step(optimizer, scaler)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        step()
        synchronize(device)
        steps, started = 0, time.perf_counter()
        while steps < 2 or (steps < max_steps and time.perf_counter() - started < seconds):
            step()
            steps += 1
        synchronize(device)
    except torch.OutOfMemoryError:  # (this size does not fit the device: the plan takes another)
        model = optimizer = None  # (the closure's too: their memory is freed)
        torch.cuda.empty_cache()
        return {"images_per_second": 0.0, "peak_memory_bytes": None, "out_of_memory": True}
    elapsed = time.perf_counter() - started
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    return {"images_per_second": steps * batch / elapsed, "peak_memory_bytes": peak}


def loss_seconds(name: str, num_classes: int, crop: int, batch: int, device: torch.device, repeats: int = 2) -> float:
    """Seconds of one forward and backward of loss `name` alone, on a batch of random logits."""
    torch.manual_seed(0)
    logits = torch.randn(batch, num_classes, crop, crop, device=device, requires_grad=True)
    target = torch.randint(0, num_classes, (batch, crop, crop), device=device)
    criterion = build_loss(name).to(device)
    criterion(logits, target).backward()  # (warm-up)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        criterion(logits, target).backward()
    synchronize(device)
    return (time.perf_counter() - started) / repeats


@torch.no_grad()
def inference_seconds(model_name: str, options: dict, num_classes: int, size: tuple[int, int], device: torch.device,
                      precision: str) -> float:
    """Seconds of one forward pass at a full-size validation image (height, width)."""
    model = build_model(model_name, num_classes, pretrained=False, **options).to(device).eval()
    image = torch.randn(1, 3, *size, device=device)
    dtype = PRECISIONS[precision]
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        model(image)
        synchronize(device)
        started = time.perf_counter()
        model(image)
        synchronize(device)
    return time.perf_counter() - started


def loader_speed(dataset, samples: int = 12) -> float:
    """Training samples per second that one loader process makes (read, decode, augment)."""
    picks = np.linspace(0, len(dataset) - 1, min(samples, len(dataset))).round().astype(int).tolist()
    dataset[picks[0]]  # (first touch: imports, caches)
    started = time.perf_counter()
    for index in picks:
        dataset[(0, index)]
    return len(picks) / max(time.perf_counter() - started, 1e-9)
