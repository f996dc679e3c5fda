"""Paired transforms: masks only by nearest neighbour and 255 padding; randomness from (seed, epoch, index)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from segmentnet.training.data import EpochSampler, SegmentationDataset, collate_pairs
from segmentnet.training.transforms import RandomScaleCrop, eval_transform, normalize, train_transform


def pair(w=50, h=30, seed=0):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    mask = Image.fromarray(rng.choice(np.array([0, 3, 7, 255], dtype=np.uint8), size=(h, w)), mode="L")
    return image, mask


@pytest.mark.parametrize("seed", range(6))
def test_scale_crop_keeps_mask_values_and_pads_with_255(seed):
    image, mask = pair()
    t = RandomScaleCrop(64, (0.5, 2.0))
    out_image, out_mask = t(image, mask, np.random.default_rng(seed))
    assert out_image.size == out_mask.size == (64, 64)
    values = set(np.unique(np.array(out_mask)).tolist())
    assert values <= {0, 3, 7, 255}
    small = RandomScaleCrop(64, (0.5, 0.5))(image, mask, np.random.default_rng(seed))  # 25x15 inside 64x64
    m = np.array(small[1])
    assert (m == 255).sum() >= 64 * 64 - 25 * 15 and (np.array(small[0]) == 0).all(axis=2).sum() >= 64 * 64 - 25 * 15


def test_scale_one_crop_is_an_exact_window():
    image, mask = pair(80, 70)
    out_image, out_mask = RandomScaleCrop(32, (1.0, 1.0))(image, mask, np.random.default_rng(3))
    big_m, small_m = np.array(mask), np.array(out_mask)
    big_i, small_i = np.array(image).astype(int), np.array(out_image).astype(int)
    hits = [(y, x) for y in range(70 - 31) for x in range(80 - 31)
            if np.array_equal(big_m[y:y + 32, x:x + 32], small_m)]
    assert any(np.abs(big_i[y:y + 32, x:x + 32] - small_i).max() <= 1 for y, x in hits)


def test_augmentation_does_not_depend_on_workers(small_voc):
    ds = SegmentationDataset(small_voc / "voc2012", "train", train_transform(40), seed=5)
    sampler = EpochSampler(len(ds), seed=5)
    sampler.set_epoch(2)

    def batches(workers):
        loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers, collate_fn=collate_pairs)
        return [b for b in loader]

    single, multi = batches(0), batches(2)
    for (i0, m0), (i1, m1) in zip(single, multi):
        assert torch.equal(i0, i1) and torch.equal(m0, m1)
    sampler.set_epoch(3)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(single, batches(0)))


def test_sampler_resumes_mid_epoch_and_shards():
    s = EpochSampler(10, seed=1)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, start=6)
    assert list(s) == full[6:]
    shards = [EpochSampler(10, seed=1, rank=r, world_size=3, pad=False) for r in range(3)]
    for sh in shards:
        sh.set_epoch(4)
    assert sorted(i for sh in shards for _, i in sh) == list(range(10))


def test_validation_is_full_size_and_normalize_matches_formula(small_voc):
    ds = SegmentationDataset(small_voc / "voc2012", "val", eval_transform())
    image, mask = ds[0]
    original = Image.open(ds.images[0])
    assert image.dtype == torch.uint8 and tuple(image.shape[1:]) == (original.height, original.width)
    assert torch.equal(mask, torch.from_numpy(np.array(Image.open(ds.mask_path(0)))).long())
    x = normalize(image[None], (0.5, 0.4, 0.3), (0.2, 0.2, 0.1))
    assert torch.allclose(x[0, 2], (image[2].float() / 255 - 0.3) / 0.1, atol=1e-5)


def test_colour_jitter_changes_the_image_alone_and_is_seeded():
    from segmentnet.training.transforms import ColourJitter

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    mask = Image.fromarray(rng.integers(0, 5, (20, 30), dtype=np.uint8))
    out, out_mask = ColourJitter(0.4)(image, mask, np.random.default_rng(1))
    again, _ = ColourJitter(0.4)(image, mask, np.random.default_rng(1))
    assert out_mask is mask and np.array_equal(np.asarray(out), np.asarray(again))
    assert not np.array_equal(np.asarray(out), np.asarray(image))
    same, _ = ColourJitter(0.0)(image, mask, np.random.default_rng(1))
    assert np.array_equal(np.asarray(same), np.asarray(image))
    with pytest.raises(ValueError, match="colour jitter strength"):
        ColourJitter(1.5)
