"""Inference: flip TTA on a mirror-symmetric model, sliding windows, multi-scale, run_model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import bomb_png
from results_helpers import TwoConvNet, save_model_checkpoint, tiny_segmentnet_checkpoint

from segmentnet.results.inference import TTA, load_model, predict_probabilities, run_model, window_starts


def two_conv_checkpoint(path, data_dir, symmetric: bool, kernel: int = 3):
    torch.manual_seed(1)
    model = TwoConvNet(21, kernel=kernel)
    if symmetric:  # left-right symmetric kernels: the model commutes with a horizontal flip
        with torch.no_grad():
            for conv in (model.conv1, model.conv2):
                conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
    return save_model_checkpoint(path, model, "two_conv", {"kernel": kernel}, data_dir)


def random_images(n=2, h=37, w=53, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, h, w), dtype=np.uint8))


def test_flip_tta_changes_nothing_on_a_mirror_symmetric_model(tmp_path, two_conv_registered):
    images = random_images()
    model, described = load_model(two_conv_checkpoint(tmp_path / "sym.pt", tmp_path, symmetric=True))
    plain = predict_probabilities(model, images, described.mean, described.std, TTA())
    flipped = predict_probabilities(model, images, described.mean, described.std, TTA(flip=True))
    torch.testing.assert_close(flipped, plain, atol=1e-5, rtol=1e-5)
    assert torch.equal(flipped.argmax(1), plain.argmax(1))
    # The same model without symmetric kernels: flip TTA does change the output, so the check above can fail.
    model, described = load_model(two_conv_checkpoint(tmp_path / "asym.pt", tmp_path, symmetric=False))
    plain = predict_probabilities(model, images, described.mean, described.std, TTA())
    flipped = predict_probabilities(model, images, described.mean, described.std, TTA(flip=True))
    assert (flipped - plain).abs().max() > 1e-3


def test_sliding_window_no_smaller_than_the_image_equals_whole_image(tmp_path, small_voc):
    model, described = load_model(tiny_segmentnet_checkpoint(tmp_path / "net.pt", small_voc))
    images = random_images(h=37, w=53)
    whole = predict_probabilities(model, images, described.mean, described.std, TTA())
    for window in (53, 64):
        windowed = predict_probabilities(model, images, described.mean, described.std, TTA(window=window, stride=20))
        assert torch.equal(windowed, whole), window
    # A window smaller than the image really tiles it: SegmentNet sees less context, so the output differs.
    tiled = predict_probabilities(model, images, described.mean, described.std, TTA(window=24, stride=16))
    assert (tiled - whole).abs().max() > 1e-4


def test_sliding_window_averages_tiles_correctly(tmp_path, two_conv_registered):
    # A 1x1-kernel model has no context: any tiling must reproduce whole-image inference exactly,
    # which holds only if every pixel is covered and overlaps are averaged.
    model, described = load_model(two_conv_checkpoint(tmp_path / "pointwise.pt", tmp_path, symmetric=False, kernel=1))
    images = random_images(h=45, w=70)
    whole = predict_probabilities(model, images, described.mean, described.std, TTA())
    for window, stride in ((16, 16), (20, 7), (32, 31)):
        tiled = predict_probabilities(model, images, described.mean, described.std, TTA(window=window, stride=stride))
        torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=1e-5)


def test_window_starts_cover_the_side():
    assert window_starts(10, 16, 8) == [0]
    assert window_starts(45, 16, 16) == [0, 16, 29]
    for size, window, stride in ((45, 16, 16), (100, 32, 21), (33, 32, 1)):
        starts = window_starts(size, window, stride)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + window] = True
        assert covered.all() and starts[-1] + window == size


def test_multi_scale_keeps_the_size_and_averages_views(tmp_path, small_voc):
    model, described = load_model(tiny_segmentnet_checkpoint(tmp_path / "net.pt", small_voc))
    images = random_images(h=40, w=56)
    args = (model, images, described.mean, described.std)
    multi = predict_probabilities(*args, TTA(scales=(0.5, 1.0)))
    half = predict_probabilities(*args, TTA(scales=(0.5,)))
    one = predict_probabilities(*args, TTA())
    assert multi.shape == one.shape == (2, 21, 40, 56)
    torch.testing.assert_close(multi, (half + one) / 2)
    torch.testing.assert_close(multi.sum(1), torch.ones(2, 40, 56))


def test_run_model_accepts_paths_pil_and_arrays(tmp_path, small_voc):
    from PIL import Image

    checkpoint = tiny_segmentnet_checkpoint(tmp_path / "net.pt", small_voc)
    paths = sorted((small_voc / "voc2012" / "val" / "images").iterdir())[:3]
    from_paths = run_model(checkpoint, paths, device="cpu")
    from_arrays = run_model(checkpoint, [np.asarray(Image.open(p).convert("RGB")) for p in paths], device="cpu")
    from_pil = run_model(checkpoint, [Image.open(p) for p in paths], device="cpu", batch_size=1)
    for a, b, c, path in zip(from_paths, from_arrays, from_pil, paths):
        width, height = Image.open(path).size
        assert a.shape == (height, width) and a.dtype == np.uint8
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_bad_tta_options_are_refused():
    from segmentnet.core.errors import UsageError

    with pytest.raises(UsageError, match="scales"):
        TTA(scales=(0.0, 1.0))
    with pytest.raises(UsageError, match="stride"):
        TTA(stride=8)
    with pytest.raises(UsageError, match="stride"):
        TTA(window=16, stride=32)


def test_hostile_image_files_are_data_errors_naming_them(tmp_path):
    from segmentnet.core.errors import DataError
    from segmentnet.results.inference import image_size, read_rgb

    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200
    for read in (read_rgb, image_size):
        with pytest.raises(DataError, match=r"bomb\.png: refused, .*decompression bomb"):
            read(bomb)
    # Above Pillow's warning limit but under its error limit: refused as well, not a mere warning.
    with pytest.raises(DataError, match="decompression bomb"):
        image_size(bomb_png(tmp_path / "big.png", 10000, 10000))
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(DataError, match=r"text\.jpg: cannot be read as an image"):
        read_rgb(tmp_path / "text.jpg")


def nested(depth: int) -> list:
    value = []
    for _ in range(depth):
        value = [value]
    return value


def test_load_model_refuses_a_folder_and_hostile_entries(tmp_path, small_voc):
    from segmentnet.core.checkpoint import load_checkpoint
    from segmentnet.core.errors import DataError

    with pytest.raises(DataError, match="is a folder, not a checkpoint file"):
        load_model(tmp_path)
    state = load_checkpoint(tiny_segmentnet_checkpoint(tmp_path / "net.pt", small_voc))
    weight = next(iter(state["model"]))
    for key, value in (("num_classes", "21"), ("palette", "red"), ("mean", [0.5]), ("model_options", [1]),
                       ("model", {"w": 1}), ("classes", ["background", "aeroplane"]),
                       # values that passed and broke inference later: an empty or short palette, an ignore index
                       # that is a class, a mean or std that float32 turns into infinity or 0
                       ("palette", []), ("palette", [[0, 0, 0], [9, 9, 9]]), ("ignore_index", 5),
                       ("mean", [1e39, 0.4, 0.4]), ("std", [1e-300, 0.2, 0.2]),
                       # tensors a model cannot take; options that are no JSON (the earlier release's layout too)
                       ("model", state["model"] | {weight: torch.empty(3, device="meta")}),
                       ("model", state["model"] | {weight: state["model"][weight].to_sparse()}),
                       ("model", state["model"] | {weight: state["model"][weight].to(torch.complex64)}),
                       ("model", state["model"] | {weight: torch.empty(2, dtype=torch.bits16)}),
                       ("model", state["model"] | {weight: state["model"][weight].to(torch.float8_e4m3fnuz)}),
                       ("model_options", {"width": torch.tensor(16)}),
                       ("mean", nested(3000))):  # (quoting it in the message must not recurse without end)
        with pytest.raises(DataError, match=f"the entries {key} are not what TrainSegmentNet.py writes"):
            load_model(state | {key: value})
    legacy_icnet = {"model": {"backbone.conv1.weight": torch.zeros(1)}, "model_name": "icnet",
                    "model_options": {"width": torch.tensor(32)}, "num_classes": 21, "mean": [0.5] * 3,
                    "std": [0.25] * 3, "palette": [[0, 0, 0]] * 21}
    with pytest.raises(DataError, match="the entries model_options are not what TrainSegmentNet.py writes"):
        load_model(legacy_icnet)
    with pytest.raises(DataError, match="lacks model"):
        load_model({k: v for k, v in state.items() if k != "model"})
