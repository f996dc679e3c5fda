"""Inference speed: images per second and latency (median, p90) per model, input size and batch size,
for PyTorch eager fp32, PyTorch with torch.compile, and ONNX Runtime fp32 (the Export.py graph).

    python bench/inference.py                                   # the defaults below, on this machine's CPU
    python bench/inference.py --models segmentnet,unet --sizes 512x512 --batches 1 --repeats 5

Models at their registry defaults with random weights (speed does not depend on the values), in eval
mode, without gradients. Sizes: 512x512 and CamVid's native 360x480 (the dataset of the CPU recipe).
Each (model, size, batch, runtime) runs `--warmup` times unmeasured (torch.compile compiles there),
then `--repeats` timed forward passes (fewer once they took `--budget` seconds, at least 3); latency is one forward pass of the batch, images/s = batch /
median latency. PyTorch and ONNX Runtime both use every core (torch.get_num_threads(), ORT's default).
With CUDA present the PyTorch runtimes also run on the GPU; otherwise the table says "GPU: not measured".
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segmentnet.datasets.common import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from segmentnet.deployment.export import OPSET, InferenceGraph, inference_only, to_onnx  # noqa: E402
from segmentnet.models import build_model  # noqa: E402

RUNTIMES = ("eager", "compile", "onnxruntime")


def sizes_arg(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in part.split("x")) for part in text.split(",")]


def timed(run, warmup: int, repeats: int, budget: float, sync=lambda: None) -> list[float]:
    """Seconds of `repeats` timed calls after `warmup` untimed ones; at least 3, fewer than `repeats`
    once they have taken `budget` seconds."""
    for _ in range(warmup):
        run()
    sync()
    seconds = []
    while len(seconds) < repeats and (len(seconds) < 3 or sum(seconds) < budget):
        start = time.perf_counter()
        run()
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def onnx_session(model, height: int, width: int):
    import onnxruntime as ort

    graph = InferenceGraph(inference_only(model), "float", IMAGENET_MEAN, IMAGENET_STD).eval()
    proto = to_onnx(graph, torch.zeros(2, 3, height, width), OPSET, "bench")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def bench_model(name: str, classes: int, sizes, batches, runtimes, device: str, warmup: int, repeats: int,
                budget: float):
    torch.manual_seed(0)
    model = build_model(name, classes).eval().to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    compiled = torch.compile(model, dynamic=False) if "compile" in runtimes else None
    session = onnx_session(model.cpu(), *sizes[0]) if "onnxruntime" in runtimes and device == "cpu" else None
    model.to(device)
    for height, width in sizes:
        for batch in batches:
            x = torch.randn(batch, 3, height, width, device=device)
            calls = {"eager": lambda: model(x), "compile": (lambda: compiled(x)) if compiled is not None else None,
                     "onnxruntime": (lambda: session.run(["logits"], {"image": x.cpu().numpy()})) if session is not None else None}
            for runtime in runtimes:
                if calls[runtime] is None:
                    continue
                with torch.no_grad():
                    seconds = timed(calls[runtime], warmup, repeats, budget, sync)
                median = statistics.median(seconds)
                p90 = sorted(seconds)[min(len(seconds) - 1, round(0.9 * (len(seconds) - 1)))]
                print(f"| {name} | {height}x{width} | {batch} | {runtime} | {device} | {batch / median:.2f} | "
                      f"{1000 * median:.0f} | {1000 * p90:.0f} | {len(seconds)} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="segmentnet,unet,deeplabv3plus",
                        help="comma-separated registry names, each at its defaults")
    parser.add_argument("--sizes", type=sizes_arg, default=[(512, 512), (360, 480)], help="HxW,HxW")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"some of {', '.join(RUNTIMES)}")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (torch.compile compiles in them)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls at most")
    parser.add_argument("--budget", type=float, default=15.0, help="seconds of timed calls per row (at least 3 calls)")
    args = parser.parse_args(argv)
    runtimes = [r for r in args.runtimes.split(",") if r]
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown:
        parser.error(f"unknown runtime(s) {', '.join(sorted(unknown))}; choices: {', '.join(RUNTIMES)}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; " + (
        f"GPU: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "GPU: not measured (no CUDA here)"))
    print("\n| model | size | batch | runtime | device | images/s | median ms | p90 ms | calls |\n"
          "|---|---|---:|---|---|---:|---:|---:|---:|")
    for name in args.models.split(","):
        for device in devices:
            bench_model(name, args.classes, args.sizes, [int(b) for b in args.batches.split(",")], runtimes,
                        device, args.warmup, args.repeats, args.budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
