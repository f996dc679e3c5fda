"""Paired image/mask transforms: each takes and returns (image, mask).

Randomness is never drawn from a global generator: a transform receives `rng`, a
numpy Generator that the dataset derives from (seed, epoch, sample index), so a sample's
augmentation does not depend on the number of loader workers or on which worker loads it.

Images stay uint8 until they reach the device, where `normalize` runs (a quarter of the bytes
to copy, and the arithmetic on the GPU). Masks are only ever resampled with nearest neighbour,
and padded with the ignore index.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..datasets.common import IGNORE_INDEX


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, mask, rng):
        for t in self.transforms:
            image, mask = t(image, mask, rng)
        return image, mask


def decode_rgb(image: Image.Image, size=None) -> tuple[Image.Image, float]:
    """Decode a lazily opened image as RGB; returns (image, decoded width / header width).

    A JPEG that is only needed at `size` (w, h) or smaller is decoded by libjpeg at 1/2, 1/4 or
    1/8 scale (DCT scaling, Image.draft), which skips most of the decoding work; the reduced
    image is still at least `size`, so what follows only ever shrinks it. Other formats, and
    images already decoded, come back as they are (factor 1).
    """
    width = image.size[0]
    drafted = image.draft("RGB", size) if size is not None else None
    image = image if image.mode == "RGB" else image.convert("RGB")
    image.load()
    return image, (drafted[1][2] / width if drafted else 1.0)


class RandomScaleCrop:
    """Random scale, then a random crop_size crop, padding (image 0, mask 255) where too small.

    Done as one step: only the region of the original that survives the crop is resampled,
    so a large image scaled up costs no more than the crop itself; and a lazily opened JPEG
    that is scaled down by half or more is decoded at reduced size (see decode_rgb).
    """

    def __init__(self, crop_size: int, scale_range=(0.5, 2.0), pad: bool = True,
                 fill: int = 0, ignore_index: int = IGNORE_INDEX):
        if crop_size <= 0:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale range must satisfy 0 < min <= max, got {scale_range}")
        self.crop, self.scale_range, self.pad = crop_size, scale_range, pad
        self.fill, self.ignore_index = fill, ignore_index

    def __call__(self, image: Image.Image, mask: Image.Image, rng: np.random.Generator):
        scale = float(rng.uniform(*self.scale_range))
        w, h = image.size  # known from the header: a lazily opened image is not decoded yet
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))  # size after scaling
        if not self.pad and (sw < self.crop or sh < self.crop):
            raise ValueError(f"image of {w}x{h} scaled by {scale:.2f} is smaller than crop_size {self.crop} "
                             f"and padding is off")
        cw, ch = min(self.crop, sw), min(self.crop, sh)                  # crop inside the scaled image
        left = int(rng.integers(0, sw - cw + 1))
        top = int(rng.integers(0, sh - ch + 1))
        sx, sy = sw / w, sh / h  # the exact factors after rounding the size
        box = (left / sx, top / sy, min(w, (left + cw) / sx), min(h, (top + ch) / sy))
        image, factor = decode_rgb(image, (sw, sh))
        image = image.resize((cw, ch), Image.BILINEAR, box=tuple(c * factor for c in box))
        mask = mask.resize((cw, ch), Image.NEAREST, box=box)
        if (cw, ch) != (self.crop, self.crop):
            # Where the scaled image is smaller than the crop, put it at a random place on the canvas.
            ox = int(rng.integers(0, self.crop - cw + 1))
            oy = int(rng.integers(0, self.crop - ch + 1))
            canvas = Image.new(image.mode, (self.crop, self.crop), (self.fill,) * len(image.getbands()))
            canvas.paste(image, (ox, oy))
            mask_canvas = Image.new(mask.mode, (self.crop, self.crop), self.ignore_index)
            if mask.mode == "P":
                mask_canvas.putpalette(mask.getpalette())
            mask_canvas.paste(mask, (ox, oy))
            image, mask = canvas, mask_canvas
        return image, mask


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, mask, rng):
        if rng.random() < self.p:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            mask = mask.transpose(Image.FLIP_LEFT_RIGHT)
        return image, mask


class ColourJitter:
    """Random brightness, contrast and saturation, each by a factor in [1 - strength, 1 + strength]
    (in random order), on the image alone: lighting and camera differ between scenes."""

    def __init__(self, strength: float):
        if not 0 <= strength < 1:
            raise ValueError(f"colour jitter strength must be in [0, 1), got {strength}")
        self.strength = strength

    def __call__(self, image, mask, rng):
        from PIL import ImageEnhance

        image = image if image.mode == "RGB" else image.convert("RGB")
        for index in rng.permutation(3):
            enhancer = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[index]
            image = enhancer(image).enhance(float(rng.uniform(1 - self.strength, 1 + self.strength)))
        return image, mask


class ToTensor:
    """PIL pair -> (uint8 CxHxW tensor, int64 HxW tensor of class indices)."""

    def __call__(self, image, mask, rng=None):
        array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
        image_t = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
        mask_t = torch.from_numpy(np.array(mask, dtype=np.int64)) if mask is not None else None
        return image_t, mask_t


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N)CHW in 0..255 -> float, (x/255 - mean) / std; run on the device after the copy."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(-1, 1, 1) * 255
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(-1, 1, 1) * 255
    return (images.float() - mean_t) / std_t


def train_transform(crop_size: int, scale_range=(0.5, 2.0), flip: float = 0.5, pad: bool = True,
                    colour_jitter: float = 0.0) -> Compose:
    steps = [RandomScaleCrop(crop_size, scale_range, pad=pad), RandomHorizontalFlip(flip)]
    if colour_jitter > 0:
        steps.append(ColourJitter(colour_jitter))
    return Compose(steps + [ToTensor()])


def eval_transform() -> Compose:
    """Validation at full size: no resampling at all."""
    return Compose([ToTensor()])
