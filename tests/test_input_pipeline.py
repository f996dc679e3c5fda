"""The fast input path keeps augmentation semantics (reduced-size JPEG decoding, crop-only resampling);
the benchmark scripts run."""
from __future__ import annotations

import importlib.util
import io
import json
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image

from segmentnet.core.errors import DataError
from segmentnet.datasets import voc2012
from segmentnet.datasets.common import save_index_png
from segmentnet.preparation import synthetic
from segmentnet.training.data import SegmentationDataset
from segmentnet.training.transforms import RandomScaleCrop, decode_rgb, train_transform


def scene(width: int, height: int, seed: int = 0):
    """A JPEG (as bytes) and its label map, with VOC's 255 borders."""
    image, label = synthetic.draw_scene(np.random.default_rng(seed), height, width, voc2012.SYNTHETIC_STYLES,
                                        border_label=255)
    return synthetic.encode(Image.fromarray(image), "JPEG", quality=95), label


def lazy(jpeg: bytes) -> Image.Image:
    return Image.open(io.BytesIO(jpeg))


def test_decode_rgb_reduces_only_when_the_image_will_shrink_that_much():
    jpeg, _ = scene(400, 300)
    image, factor = decode_rgb(lazy(jpeg), (100, 75))  # a quarter of the size: libjpeg decodes at 1/4
    assert factor == 0.25 and image.size == (100, 75) and image.mode == "RGB"
    image, factor = decode_rgb(lazy(jpeg), (210, 160))  # a little over half: must decode in full
    assert factor == 1.0 and image.size == (400, 300)
    full = decode_rgb(lazy(jpeg))[0]
    assert decode_rgb(full, (100, 75)) == (full, 1.0)  # decoded already: nothing to gain


@pytest.mark.parametrize("seed", range(6))
def test_reduced_decode_crop_matches_a_full_decode(seed):
    jpeg, label = scene(480, 360, seed)
    mask = Image.fromarray(label, mode="P")
    transform = RandomScaleCrop(64, scale_range=(0.2, 0.45))  # always at most half: the draft path
    fast_image, fast_mask = transform(lazy(jpeg), mask.copy(), np.random.default_rng(seed))
    full_image, full_mask = transform(decode_rgb(lazy(jpeg))[0], mask.copy(), np.random.default_rng(seed))
    # Same geometry, so the masks (nearest, from the same original) are identical ...
    assert np.array_equal(np.array(fast_mask), np.array(full_mask))
    # ... and the images differ only by libjpeg's DCT-domain scaling against Pillow's filter: a mean
    # of 0.6-1.2 grey levels on these scenes, where the same crop shifted by one pixel gives 1.8-5.
    diff = np.abs(np.asarray(fast_image, dtype=np.int16) - np.asarray(full_image, dtype=np.int16))
    assert diff.mean() < 1.5 and np.percentile(diff, 99) < 16


@pytest.mark.parametrize("seed", range(6))
def test_crop_only_resampling_equals_resize_then_crop(seed):
    """The one-step scale+crop is the textbook 'resize the whole image, then crop' done cheaply."""
    _, label = scene(200, 150, seed)
    labels = set(np.unique(label).tolist())
    rng = np.random.default_rng(seed)
    crop = 96
    transform = RandomScaleCrop(crop, scale_range=(0.5, 2.0))
    image = Image.new("RGB", (200, 150))
    out_image, out_mask = transform(image, Image.fromarray(label, mode="P"), rng)

    rng = np.random.default_rng(seed)  # redraw the same numbers, in the transform's order
    scale = rng.uniform(0.5, 2.0)
    sw, sh = round(200 * scale), round(150 * scale)
    cw, ch = min(crop, sw), min(crop, sh)
    left, top = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    # Nearest neighbour of the scaled image's pixel centres, cropped; where a centre falls exactly
    # on a source pixel border (a tie, float rounding decides) either neighbour is right.
    xs, ys = (left + np.arange(cw) + 0.5) * 200 / sw, (top + np.arange(ch) + 0.5) * 150 / sh
    candidates = [label[np.ix_(iy, ix)]
                  for ix in (np.floor(xs).astype(int), np.ceil(xs - 1).astype(int).clip(0))
                  for iy in (np.floor(ys).astype(int), np.ceil(ys - 1).astype(int).clip(0))]
    mask = np.array(out_mask)
    if (cw, ch) != (crop, crop):
        ox, oy = int(rng.integers(0, crop - cw + 1)), int(rng.integers(0, crop - ch + 1))
        padding = np.ones_like(mask, dtype=bool)
        padding[oy:oy + ch, ox:ox + cw] = False
        assert (mask[padding] == 255).all()
        mask = mask[oy:oy + ch, ox:ox + cw]
    assert out_mask.size == out_image.size == (crop, crop)
    assert np.logical_or.reduce([mask == c for c in candidates]).all()
    assert set(np.unique(np.array(out_mask)).tolist()) <= labels | {255}  # never a blended label


def write_pairs(root, jpegs: list[bytes], labels) -> None:
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i, (jpeg, label) in enumerate(zip(jpegs, labels)):
            (root / split / "images" / f"{i}.jpg").write_bytes(jpeg)
            save_index_png(root / split / "masks" / f"{i}.png", label, voc2012.PALETTE)
    (root / "dataset.json").write_text(json.dumps({"counts": {"train": len(jpegs), "val": len(jpegs)}}))


def test_dataset_path_is_the_transform_on_the_decoded_pair_and_names_a_corrupt_file(tmp_path):
    pairs = [scene(160, 120, seed) for seed in range(2)]
    write_pairs(tmp_path, [p[0] for p in pairs], [p[1] for p in pairs])
    transform = train_transform(48, (0.3, 1.5))
    dataset = SegmentationDataset(tmp_path, "train", transform, seed=3)
    for index in range(2):
        image, mask = dataset[(1, index)]
        decoded_image, decoded_mask = dataset.load(index)
        same_image, same_mask = transform(decoded_image, decoded_mask, np.random.default_rng([3, 1, index]))
        assert image.dtype.is_floating_point is False and image.shape == (3, 48, 48)
        assert (mask == same_mask).all()
        assert (image.int() - same_image.int()).abs().float().mean() < 1.5  # equal but for reduced decoding

    broken = tmp_path / "train" / "images" / "1.jpg"
    broken.write_bytes(broken.read_bytes()[:600])  # header intact, pixels cut off
    with pytest.raises(DataError, match="1.jpg"):
        dataset[(0, 1)]


def load_bench(name: str, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_input_pipeline_benchmark_runs(tmp_path, capsys, monkeypatch):
    bench = load_bench("input_pipeline", monkeypatch)
    out = tmp_path / "figures.json"
    assert bench.main(["--images", "2", "--passes", "1", "--width", "80", "--height", "60", "--crop-size", "48",
                       "--base-size", "60", "--batch-size", "2", "--data", str(tmp_path), "--json-out", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert [r["pipeline"].split(" ")[0] for r in figures["rows"]] == ["reference", "ours,", "ours"]
    assert all(r["images_per_second"] > 0 for r in figures["rows"])
    assert "ours / reference" in capsys.readouterr().out


def test_train_step_benchmark_measures_both_paths_and_counts_flops(monkeypatch):
    bench = load_bench("train_step", monkeypatch)
    monkeypatch.setattr(torch, "get_num_threads", torch.get_num_threads)  # restored after the test
    torch.set_num_threads(1)  # two threads on a crowded 2-core machine are many times slower
    cfg = bench.Config(size=32, batch_size=1, steps=1, warmup=0, device="cpu")
    eager = bench.measure(cfg, "segmentnet", "eager")
    fast = bench.measure(cfg, "segmentnet", "optimised")
    assert eager["options"] == ["none"] and "channels_last" in fast["options"]
    assert eager["images_per_second"] > 0 and fast["images_per_second"] > 0
    # Convolution FLOPs grow with the pixel count: twice the side, four times the FLOPs.
    larger = bench.measure(bench.Config(size=64, batch_size=1, steps=1, warmup=0, device="cpu"), "segmentnet", "eager")
    assert larger["flops_per_step"] == pytest.approx(4 * eager["flops_per_step"], rel=0.02)


def test_data_wait_benchmark_trains_and_reports_each_epoch(tmp_path, capsys, monkeypatch):
    bench = load_bench("data_wait", monkeypatch)
    out = tmp_path / "figures.json"
    assert bench.main(["--device", "cpu", "--images", "4", "--val-images", "1", "--width", "80", "--height", "60",
                       "--crop-size", "32", "--batch-size", "2", "--epochs", "2", "--workers", "0",
                       "--model-options", '{"width": 4, "depth": 1, "blocks": 1}', "--data", str(tmp_path),
                       "--json-out", str(out)]) == 0
    figures = json.loads(out.read_text())
    (run,) = figures["runs"]
    metrics = [json.loads(line) for line in (tmp_path / "runs" / "workers0" / "metrics.jsonl").read_text().splitlines()]
    assert run["workers"] == 0 and [e["epoch"] for e in run["epochs"]] == [1, 2]
    assert [e["data_wait_fraction"] for e in run["epochs"]] == [m["data_wait_fraction"] for m in metrics]
    # Without workers every batch is decoded in the loop itself: waiting is a real share of each epoch.
    assert all(0 < e["data_wait_fraction"] < 1 for e in run["epochs"])
    assert "data wait" in capsys.readouterr().out
    with pytest.raises(bench.ConfigError, match="workers must be comma-separated counts"):
        bench.main(["--workers", "four"])
