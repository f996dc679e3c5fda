"""SegmentNet (the residual UNet) and the registry."""
from __future__ import annotations

import pytest
import torch

from SegmentNet import MODELS, SegmentNet, build_model


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (33, 7), (1, 1)])
@pytest.mark.parametrize("options", [{"width": 8, "depth": 2, "blocks": 1}, {"width": 4, "depth": 5, "blocks": 2},
                                     {"width": 8, "depth": 3, "blocks": 1, "stem_stride": 2},
                                     {"width": 8, "depth": 3, "blocks": 1, "stem_stride": 4}])
def test_logits_at_input_size_for_any_size(size, options):
    model = build_model("segmentnet", num_classes=5, **options).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 5, *size)


def test_skip_connections_and_learned_upsampling_are_used():
    model = SegmentNet(num_classes=3, width=4, depth=3, blocks=1)
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules()) == 3
    x = torch.randn(1, 3, 40, 40)
    model(x).sum().backward()
    # Every parameter, encoder to head, takes part in the output.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("stride", [2, 4])
def test_a_strided_stem_runs_no_layer_at_full_resolution(stride):
    model = SegmentNet(num_classes=3, width=4, depth=2, blocks=1, stem_stride=stride)
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    out = model(torch.randn(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    # only the stem's first convolution runs at half resolution; the head at 1/stride
    assert out.shape == (1, 3, 64, 64) and max(sizes) == 32 and sizes[-1] == 64 // stride
    # the default keeps the previous layout, so older checkpoints still load
    plain = SegmentNet(num_classes=3, width=4, depth=2, blocks=1)
    assert [k for k in plain.state_dict()] == [k for k in SegmentNet(3, width=4, depth=2, blocks=1,
                                                                      stem_stride=2).state_dict()]
    with pytest.raises(ValueError, match="stem_stride must be one of"):
        SegmentNet(3, stem_stride=3)


def test_width_and_depth_change_the_network():
    small = sum(p.numel() for p in SegmentNet(21, width=8, depth=2).parameters())
    wide = sum(p.numel() for p in SegmentNet(21, width=16, depth=2).parameters())
    deep = sum(p.numel() for p in SegmentNet(21, width=8, depth=3).parameters())
    assert small < wide and small < deep


def test_registry_unknown_name_and_option_list_the_choices():
    assert MODELS["segmentnet"] is SegmentNet
    with pytest.raises(KeyError, match="unknown model 'resnet9000'; choices: .*segmentnet"):
        build_model("resnet9000", 21)
    with pytest.raises(KeyError, match="no option.*colour.*its options: .*width"):
        build_model("segmentnet", 21, colour="red")
