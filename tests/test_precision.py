"""Mixed precision and torch.compile, checked on the CPU (CI has no GPU).

CPU autocast runs the same models in bf16/fp16 that CUDA autocast runs on a GPU; its op lists differ
in detail, but a layer that breaks in half precision (a dtype mismatch, an overflow, a dead gradient)
breaks here too. The fp16 path's GradScaler is torch's device-generic one, the same code on both.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import ROOT, config_args, tiny_train_config

from segmentnet.core.checkpoint import load_checkpoint, load_weights
from segmentnet.models import build_model
from segmentnet.training.engine import train
from segmentnet.training.optim import autocast_settings, make_scaler


def test_autocast_settings():
    cpu = torch.device("cpu")
    assert autocast_settings(cpu, amp=True) == (None, False)  # auto: CPUs run fp32
    assert autocast_settings(cpu, amp=False, amp_dtype="bfloat16") == (None, False)
    assert autocast_settings(cpu, amp=True, amp_dtype="bfloat16") == (torch.bfloat16, False)
    assert autocast_settings(cpu, amp=True, amp_dtype="float16") == (torch.float16, True)
    assert not make_scaler(cpu, True, "bfloat16").is_enabled() and not make_scaler(cpu, False).is_enabled()
    scaler = make_scaler(cpu, True, "float16")
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()


def test_a_disabled_scaler_steps_as_the_plain_optimizer_does():
    from segmentnet.training.optim import optimizer_step

    torch.manual_seed(0)
    plain, scaled = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(8, 4)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    opt_scaled = torch.optim.SGD(scaled.parameters(), lr=0.1, momentum=0.9)
    scaler = make_scaler(torch.device("cpu"), amp=False)
    for _ in range(3):
        plain(x).square().mean().backward()
        opt_plain.step()
        opt_plain.zero_grad()
        loss = scaled(x).square().mean()
        assert scaler.scale(loss) is loss  # the loss passes through unscaled
        loss.backward()
        optimizer_step(opt_scaled, scaler)
        assert all(p.grad is None for p in scaled.parameters())  # and the gradients are cleared
    for a, b in zip(plain.parameters(), scaled.parameters()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_compile_and_channels_last_on_cpu_train_and_write_plain_checkpoints(small_voc, tmp_path):
    # In a child process: the oneDNN crash these settings once reached here is a segfault, not an exception.
    # Width 8 is the size at which it crashed (torch 2.13 CPU, NHWC strided 1x1 convolution backward).
    cfg = tiny_train_config(small_voc, tmp_path / "run", compile=True, channels_last=True)
    child = subprocess.run([sys.executable, str(ROOT / "TrainSegmentNet.py"), *config_args(cfg)],
                           capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    assert "warning: channels_last is ignored on CPUs" in child.stderr
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 1 and state["config"]["compile"] is True
    plain = build_model(cfg.model, state["num_classes"], **cfg.model_options)
    assert list(state["model"]) == list(plain.state_dict())  # no "_orig_mod." (nor "module.") prefixes
    load_weights(plain, state["model"], tmp_path / "run" / "last.pt")
    for key, value in plain.state_dict().items():
        assert torch.equal(value, state["model"][key])
    # and a compiled run continues in an uncompiled one
    summary = train(tiny_train_config(small_voc, "", epochs=2, resume=str(tmp_path / "run" / "last.pt")))
    assert summary["epoch"] == 2
