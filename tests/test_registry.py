"""What every registered model must do, in one tester parametrized over the registry (in the way of
segmentation_models.pytorch's tests/models/base.py): build at small options, run at odd sizes, train
(a step, and an epoch through the engine), train under bf16 and fp16 autocast, check its options,
export to ONNX. A new model in MODELS is tested by adding its small options to model_cases.py.

The quick tier (`make test`) runs the cheap checks for every model and the costly ones (an epoch
through the engine, bf16 autocast, the ONNX export) for one model of each family: the models that
share a decoder's code (models/decoders.py, fcn.py, segnet.py, icnet.py, hypercolumns.py,
segmentnet.py). `make test-all` runs every check for every model, fp16 autocast too."""
from __future__ import annotations

import inspect

import onnx
import pytest
import torch
from conftest import tiny_train_config
from model_cases import NUM_CLASSES, SMALL_OPTIONS, check_forward_backward_step_and_state_dict, small_model
from results_helpers import save_model_checkpoint

from segmentnet.core.errors import ConfigError
from segmentnet.datasets.voc2012 import CLASSES, PALETTE
from segmentnet.deployment import export
from segmentnet.deployment.export import export_checkpoint
from segmentnet.deployment.onnx_model import OnnxModel
from segmentnet.models import MODELS, build_model, model_option_problems
from segmentnet.models.compose import SegmentationModel
from segmentnet.results.inference import load_model
from segmentnet.training.engine import train
from segmentnet.training.loops import compute_loss
from segmentnet.training.losses import build_loss

# One model of each family, the cheapest to export (measured: bench/RESULTS.md, "Issue 26: the test tiers").
REPRESENTATIVES = {"segmentnet": "segmentnet.models.segmentnet", "fcn": "segmentnet.models.decoders",
                   "fcn32s": "segmentnet.models.fcn", "segnet": "segmentnet.models.segnet",
                   "icnet": "segmentnet.models.icnet", "hypercolumn_vgg16": "segmentnet.models.hypercolumns"}
HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# Small enough to be quick, large enough for every model (ICNet's quarter-size branch pools to 6x6 bins);
# odd sizes, and a batch of two: batch, height and width must all be dynamic.
SIZES = [(1, 96, 128), (2, 97, 75)]


def family(model: torch.nn.Module) -> str:
    """The module whose code makes the model's decoder (a composition's) or the whole model."""
    return type(model.decoder if isinstance(model, SegmentationModel) else model).__module__


def every_model(costly: bool = False) -> list:
    """The registry's names; a costly check runs in the quick tier for the families' representatives only."""
    return [name if not costly or name in REPRESENTATIVES else pytest.param(name, marks=pytest.mark.slow)
            for name in sorted(MODELS)]


def randomise_zero_weights(model: torch.nn.Module) -> None:
    """FCN's score layers start at zero (all logits 0): give them values so outputs can be compared."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.01)


def test_every_model_has_small_test_options_and_each_family_a_representative():
    assert set(SMALL_OPTIONS) == set(MODELS)
    with torch.device("meta"):  # (built without memory or initialisation: only the classes matter)
        families = {name: family(build_model(name, NUM_CLASSES, **SMALL_OPTIONS[name])) for name in MODELS}
    assert {families[name] for name in REPRESENTATIVES} == set(families.values())
    assert all(families[name] == module for name, module in REPRESENTATIVES.items())


class TestEveryModel:
    @pytest.mark.parametrize("name", every_model())
    def test_runs_and_trains_a_step_at_odd_sizes(self, name):
        check_forward_backward_step_and_state_dict(name, SMALL_OPTIONS[name])

    @pytest.mark.parametrize("name", every_model(costly=True))
    def test_trains_an_epoch_through_the_engine(self, name, smaller_voc, tmp_path):
        cfg = tiny_train_config(smaller_voc, tmp_path / "run", model=name, model_options=SMALL_OPTIONS[name],
                                crop_size=32, batch_size=4, optimizer="sgd", loss="ce")
        summary = train(cfg)
        assert summary["epoch"] == 1 and summary["nonfinite_steps"] == 0
        assert 0 <= summary["final_scores"]["miou"] <= 1
        assert (tmp_path / "run" / "last.pt").exists()

    @pytest.mark.parametrize("amp_dtype", ["bfloat16", pytest.param("float16", marks=pytest.mark.slow)])
    @pytest.mark.parametrize("name", every_model(costly=True))
    def test_trains_under_half_precision_autocast(self, name, amp_dtype):
        model = small_model(name).train()
        n, h, w = 2, 33, 41
        images, target = torch.randn(n, 3, h, w), torch.randint(0, NUM_CLASSES, (n, h, w))
        target[:, :4] = 255
        with torch.autocast("cpu", dtype=HALF[amp_dtype]):
            outputs = model(images)
            loss = compute_loss(outputs, target, build_loss("ce+jaccard"), getattr(model, "aux_weights", {}))
        main = outputs["out"] if isinstance(outputs, dict) else outputs
        assert main.dtype == HALF[amp_dtype] and main.shape == (n, NUM_CLASSES, h, w)  # autocast did apply
        assert torch.isfinite(loss)
        loss.backward()
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        missing = [n for n, p in trainable.items() if p.grad is None]
        assert not missing, f"no gradient under {amp_dtype} for {missing[:5]}"
        for n, p in trainable.items():  # master weights and their gradients stay fp32
            assert p.dtype == p.grad.dtype == torch.float32, n
            assert torch.isfinite(p.grad).all(), n

    @pytest.mark.parametrize("name", every_model())
    def test_bf16_logits_agree_with_fp32(self, name):
        model = small_model(name).eval()
        randomise_zero_weights(model)
        images = torch.randn(2, 3, 33, 41)
        with torch.no_grad():
            full = model(images)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                half = model(images).float()
        assert full.abs().max() > 0
        relative = ((half - full).norm() / full.norm()).item()
        agree = (half.argmax(1) == full.argmax(1)).float().mean().item()
        # bf16 keeps 8 bits of mantissa (0.4 %); measured 0.7-1.2 % here. SegNet: 18 % with 89 % of the pixels
        # agreeing on torchvision's VGG16-BN at width 8 (26 % and 86 % at its full width): near-equal values
        # inside a pooling window pick other unpooling positions. A broken layer gives ~100 %.
        bound, agreeing = (0.35, 0.8) if name == "segnet" else (0.15, 0.9)
        assert relative < bound and agree > agreeing, (relative, agree)

    @pytest.mark.parametrize("name", every_model())
    def test_checks_the_type_and_range_of_its_options(self, name):
        options = [p for p in inspect.signature(MODELS[name]).parameters if p not in ("self", "num_classes")]
        numeric = [o for o in ("width", "output_stride", "fc_width", "hidden") if o in options]
        assert numeric or set(options) <= {"encoder", "encoder_weights", "weights", "aux"}, options  # (names, a switch)
        for option in options:  # no option takes a JSON object
            problems = model_option_problems(name, {option: {"x": 1}})
            assert len(problems) == 1 and problems[0].startswith(f"model_options {option} of model {name!r} must be ")
            assert problems[0].endswith("got {'x': 1}"), problems
        for option in numeric[:1]:
            for value in ("32", -1, 2.5, 10 ** 6):
                problems = model_option_problems(name, {option: value})
                assert len(problems) == 1, value
                assert problems[0].startswith(f"model_options {option} of model {name!r} must be "), value
                with pytest.raises(ConfigError, match=f"model_options {option}"):
                    build_model(name, 21, **{option: value})

    @pytest.mark.parametrize("name", every_model(costly=True))
    def test_exports_and_runs_as_in_pytorch(self, name, tmp_path):
        torch.manual_seed(0)
        model = build_model(name, len(CLASSES), **SMALL_OPTIONS[name])
        checkpoint = save_model_checkpoint(tmp_path / "best.pt", model, name, SMALL_OPTIONS[name], tmp_path)
        printed = []
        out = export_checkpoint(checkpoint, sizes=SIZES, log=printed.append)
        assert out == tmp_path / "best.onnx" and len(printed) == 2
        assert all("largest |logit difference|" in line and "argmax agrees" in line for line in printed)
        # Independently of the export's own check: other random inputs, through Predict's loading path.
        onnx_model, described = load_model(out)
        assert isinstance(onnx_model, OnnxModel)
        assert (described.model_name, described.classes, described.palette) == (
            name, list(CLASSES), [list(c) for c in PALETTE])
        model.eval()
        for batch, height, width in SIZES:
            x = torch.randn(batch, 3, height, width)
            with torch.no_grad():
                expected = model(x)
            got = onnx_model(x)
            assert got.shape == expected.shape == (batch, len(CLASSES), height, width)
            check = export.compare(got, expected, export.tolerance_of(model))
            assert check.passed, check
            assert check.max_difference <= check.allowed or name == "segnet"  # (see export.AT_MAXIMA)
        # The inference model only: no auxiliary head's weights in the file.
        assert not any("aux" in tensor.name for tensor in onnx.load(out).graph.initializer)
