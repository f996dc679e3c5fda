"""Training-step speed of every registered model: the optimised path against plain fp32 eager.

    python bench/train_step.py                                   # every model in MODELS, 512x512, batch 16
    python bench/train_step.py --models segmentnet --size 256 --batch-size 4 --steps 5   # a quick CPU run

For each model in segmentnet.models.MODELS (with its default options) it times whole training
steps (forward, loss, backward, AdamW step) on random data, after warm-up steps:

eager      fp32, NCHW, no compile: the plain loop
optimised  what TrainSegmentNet does with the speed options on: on CUDA bf16 autocast (fp16 with a
           gradient scaler where bf16 is missing), channels_last, torch.compile, cudnn.benchmark;
           on a CPU channels_last (and compile with --compile-on-cpu true)

and reports images/s, peak memory and the FLOPs of a step (counted with torch.utils.flop_counter).
On a GPU it also measures the bf16 matmul peak of that GPU and gives model FLOPs utilisation
(MFU = achieved FLOP/s / that peak). Every measurement runs in a fresh process, so that peak memory
(CUDA: max_memory_allocated; CPU: peak resident set size) belongs to it alone.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segmentnet.core.cli import call_main  # noqa: E402
from segmentnet.core.config import ConfigError, parse_config  # noqa: E402
from segmentnet.models import MODELS, build_model  # noqa: E402
from segmentnet.training.loops import compute_loss  # noqa: E402
from segmentnet.training.losses import build_loss  # noqa: E402
from segmentnet.training.optim import autocast_settings, compile_model, make_scaler, optimizer_step  # noqa: E402


@dataclass
class Config:
    models: str = ""              # comma-separated model names; empty means every model in MODELS
    size: int = 512               # square input size in pixels
    batch_size: int = 16          # images per step
    num_classes: int = 21         # classes of the random labels (VOC's 21)
    steps: int = 20               # timed steps per measurement
    warmup: int = 5               # untimed steps first (compilation, cuDNN autotuning, allocator)
    device: str = "auto"          # auto (CUDA when present), cpu, cuda or cuda:N
    compile_on_cpu: bool = False  # also torch.compile on a CPU (needs a C++ compiler; slow to compile)
    threads: int = 0              # CPU threads (0: torch's default)
    json_out: str = ""            # also write the figures as JSON to this file
    only: str = ""                # internal: run one measurement (model:path, or 'peak') and print JSON


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(device: torch.device, dtype=torch.bfloat16) -> float:
    """Best FLOP/s of large square matmuls in `dtype` on this device (the MFU denominator)."""
    best = 0.0
    for n in (4096, 8192):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        synchronize(device)
        repeats = 20
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = max(best, 2 * n ** 3 * repeats / (time.perf_counter() - started))
    return best


def step_flops(model, images, masks, criterion) -> int:
    """FLOPs of one forward and backward, counted by torch.utils.flop_counter (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        compute_loss(model(images), masks, criterion, getattr(model, "aux_weights", {})).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(cfg: Config, name: str, path: str) -> dict:
    """Images/s and peak memory of training steps of one model on one path (eager or optimised)."""
    device = pick_device(cfg.device)
    torch.manual_seed(0)
    model = build_model(name, cfg.num_classes).to(device).train()
    images = torch.randn(cfg.batch_size, 3, cfg.size, cfg.size, device=device)
    masks = torch.randint(0, cfg.num_classes, (cfg.batch_size, cfg.size, cfg.size), device=device)
    criterion = build_loss("ce").to(device)
    aux_weights = getattr(model, "aux_weights", {})
    flops = step_flops(model, images, masks, criterion) if path == "eager" else None

    optimised = path == "optimised"
    dtype, needs_scaler = autocast_settings(device, amp=optimised)
    options = []
    if optimised:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
        options.append("channels_last")
        if dtype is not None:
            options.append(f"autocast {str(dtype).replace('torch.', '')}" + (" + GradScaler" if needs_scaler else ""))
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            options.append("cudnn.benchmark")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = make_scaler(device, amp=optimised)
    train_model = model
    if optimised and (device.type == "cuda" or cfg.compile_on_cpu):
        train_model = compile_model(model, device)
        options.append("compile")

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = compute_loss(train_model(images), masks, criterion, aux_weights)
        scaler.scale(loss).backward()
        optimizer_step(optimizer, scaler)

    for _ in range(cfg.warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(cfg.steps):
        step()
    synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"model": name, "path": path, "options": options or ["none"], "images_per_second":
            cfg.batch_size * cfg.steps / seconds, "step_ms": 1000 * seconds / cfg.steps, "peak_memory_bytes": peak,
            "images_per_cpu_second": cfg.batch_size * cfg.steps / cpu_seconds,
            "memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
            "flops_per_step": flops}


def run_isolated(argv: list[str], only: str) -> dict:
    """This script in a fresh process for one measurement; its last output line is the JSON result."""
    result = subprocess.run([sys.executable, __file__, *argv, "--only", only], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"measurement {only} failed:\n{result.stdout}{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_config(Config, argv, description=__doc__)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.only:
        if cfg.only == "peak":
            result = {"bf16_matmul_flops": measure_matmul_peak(pick_device(cfg.device))}
        else:
            name, path = cfg.only.split(":")
            result = measure(cfg, name, path)
        print(json.dumps(result))
        return 0

    names = [n.strip() for n in cfg.models.split(",") if n.strip()] or sorted(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(unknown)}; choices: {', '.join(sorted(MODELS))}")
    device = pick_device(cfg.device)
    peak = run_isolated(argv, "peak")["bf16_matmul_flops"] if device.type == "cuda" else None
    print(f"machine: {machine()}; device {device}, {torch.get_num_threads()} threads")
    print(f"{cfg.size}x{cfg.size}, batch {cfg.batch_size}, {cfg.num_classes} classes, {cfg.warmup} warm-up + "
          f"{cfg.steps} timed steps" + (f"; bf16 matmul peak {peak / 1e12:.0f} TFLOP/s" if peak else ""))
    rows = []
    for name in names:
        eager = run_isolated(argv, f"{name}:eager")
        fast = run_isolated(argv, f"{name}:optimised")
        fast["flops_per_step"] = eager["flops_per_step"]  # the same model: count once, in eager fp32
        for row in (eager, fast):
            achieved = row["flops_per_step"] * row["images_per_second"] / cfg.batch_size
            row["achieved_tflops"] = achieved / 1e12
            row["mfu"] = achieved / peak if peak else None
            mfu = f", MFU {100 * row['mfu']:.1f}%" if peak else ""
            if device.type == "cpu":  # wall time also counts waiting for a core on a shared machine
                mfu += f", {row['images_per_cpu_second']:.2f} images per CPU-second"
            print(f"{name:14s} {row['path']:9s} {row['images_per_second']:8.2f} images/s  {row['step_ms']:9.1f} ms/step"
                  f"  peak {row['peak_memory_bytes'] / 2**30:6.2f} GiB ({row['memory_kind']})  "
                  f"{row['flops_per_step'] / cfg.batch_size / 1e9:.1f} GFLOP/image, {row['achieved_tflops']:.3f} "
                  f"TFLOP/s{mfu}  [{', '.join(row['options'])}]")
        ratio = fast["images_per_second"] / eager["images_per_second"]
        cpu_ratio = fast["images_per_cpu_second"] / eager["images_per_cpu_second"]
        print(f"{name:14s} optimised / eager: {ratio:.2f}x" + (f" ({cpu_ratio:.2f}x per CPU-second)"
                                                                if device.type == "cpu" else ""))
        rows += [eager, fast]
    if cfg.json_out:
        Path(cfg.json_out).write_text(json.dumps({"config": vars(cfg), "machine": machine(), "device": str(device),
                                                  "bf16_matmul_flops": peak, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(call_main(main))
