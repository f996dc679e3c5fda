"""Hypercolumns (Hariharan, Arbelaez, Girshick and Malik, CVPR 2015) on VGG16 or SqueezeNet 1.1.

The hypercolumn of a pixel is the vector of the features at that place from several layers of a
CNN, each layer's map upsampled (bilinearly) to the input size, concatenated. A per-pixel MLP of
1x1 convolutions classifies it.

encoder     torchvision's SqueezeNet 1.1 or VGG16 (compose.py's Encoder), kept only up to the last tapped
            layer; frozen (no gradients, eval mode) unless finetune is true
layers      indices into the encoder's layers (torchvision's `features.N`) whose outputs are tapped
            (see DEFAULT_LAYERS); ReLUs run out of place so that a tapped convolution's output is not
            overwritten
classifier  PixelMLP: standardise (per-channel mean and std, set by the pre-training stage), 1x1
            conv to `hidden` channels, ReLU, 1x1 conv to class logits (hidden 0: a linear classifier)

The first classifier layer is linear, and so is bilinear upsampling, so they commute: the decoder
applies each tap's slice of the first layer at the tap's own resolution and upsamples `hidden`
channels instead of the whole hypercolumn (the paper's trick). The result equals classifying the
upsampled, concatenated hypercolumn exactly; `hypercolumns_at` samples that hypercolumn at given
pixels, which is what the extraction stage stores (see segmentnet/hypercolumns/features.py).

Options: layers, hidden, finetune, encoder_weights (torchvision's name or a file), classifier_init (a
classifier.pt of the pre-training stage; refused unless it was trained on this CNN's hypercolumns),
cnn_seed (random CNN weights are drawn from this seed, so that every stage builds the same random CNN),
width (VGG16's channels scaled by width/64; 64 is torchvision's, smaller only for tests).
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checkpoint import load_checkpoint
from ..core.errors import ConfigError, DataError
from .compose import SegmentationModel
from .decoders import Decoder, upsample_to
from .encoders import build_encoder
from .pretrained import WeightsSpec

DEFAULT_HIDDEN = 512
CLASSIFIER_KIND = "hypercolumn_classifier"


CNN_ENCODERS = {"squeezenet": "squeezenet1_1", "vgg16": "vgg16"}  # the method's names of its CNNs -> encoders
LAYER_COUNTS = {"squeezenet": 13, "vgg16": 31}  # len(features) of torchvision's squeezenet1_1 and vgg16
# The tapped layers by default, as indices into torchvision's `features`.
DEFAULT_LAYERS = {
    # SqueezeNet 1.1: conv1's ReLU (stride 2), fire3 (stride 4), fire5 (stride 8), fire9 (stride 16).
    "squeezenet": (1, 4, 7, 12),
    # VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (strides 1 to 16).
    "vgg16": (3, 8, 15, 22, 29),
}


def check_layers(layers, cnn: str, count: int) -> tuple[int, ...]:
    layers = tuple(sorted(set(int(i) for i in layers)))
    if not layers or layers[0] < 0 or layers[-1] >= count:
        raise ConfigError(f"layers {list(layers)} for {cnn}: give indices into its features, 0 to {count - 1} "
                          f"(default {list(DEFAULT_LAYERS[cnn])})")
    return layers


def fingerprint(module: nn.Module) -> str:
    """SHA-1 of a module's weights: identifies the CNN that hypercolumns were computed with."""
    digest = hashlib.sha1()
    for key, tensor in module.state_dict().items():
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        if not tensor.is_meta:  # a model built on the meta device (for counting) has no values yet
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def mismatches(expected: dict, found: dict, keys=("cnn", "layers", "width", "cnn_fingerprint")) -> list[str]:
    """What differs between two records of a CNN (a model's identity, a file's header)."""
    out = []
    for key in keys:
        a, b = expected.get(key), found.get(key)
        if key == "layers":
            a, b = list(a or []), list(b or [])
        if a != b:
            what = "weights" if key == "cnn_fingerprint" else key
            out.append(f"{what} {b!r} (expected {a!r})" if key != "cnn_fingerprint" else
                       f"its CNN has other weights (fingerprint {str(b)[:12]}, expected {str(a)[:12]})")
    return out


class PixelMLP(nn.Module):
    """Per-pixel classifier: standardisation, then 1x1 convolutions with ReLUs between them."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = DEFAULT_HIDDEN):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_channels))
        self.register_buffer("std", torch.ones(in_channels))
        widths = [in_channels] + ([hidden] if hidden else []) + [num_classes]
        self.layers = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(widths, widths[1:]))

    def first_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first convolution with the standardisation folded in: (weight [out, in], bias [out])."""
        weight = self.layers[0].weight.flatten(1) / self.std
        return weight, self.layers[0].bias - weight @ self.mean

    def rest(self, y: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[1:]:
            y = layer(F.relu(y))
        return y

    def classify_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """(N, in_channels) hypercolumns -> (N, num_classes) logits."""
        weight, bias = self.first_layer()
        y = F.linear(vectors, weight, bias)[..., None, None]
        return self.rest(y).flatten(1)


class HypercolumnDecoder(Decoder):
    """The taps of the encoder, each through its slice of the classifier's first layer, upsampled, summed."""

    own_init = True  # PyTorch's default initialisation of the classifier, which the pre-training replaces

    def __init__(self, encoder, num_classes: int, layers: tuple[int, ...], hidden: int, finetune: bool):
        super().__init__()
        self.layers_tapped, self.finetune = layers, finetune
        self.slices, start = [], 0
        for channels in tap_channels(encoder, layers):
            self.slices.append((start, start + channels))
            start += channels
        self.dim = start
        self.classifier = PixelMLP(self.dim, num_classes, hidden)

    def features(self, encoder, x):
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            return [x, *encoder.taps(x, self.layers_tapped)]

    def forward(self, features):
        size = features[0].shape[-2:]
        weight, bias = self.classifier.first_layer()
        y = bias.view(1, -1, 1, 1)
        for feature, (start, stop) in zip(features[1:], self.slices):
            z = F.conv2d(feature, weight[:, start:stop, None, None])
            y = y + upsample_to(z, size)
        return self.classifier.rest(y)


def tap_channels(encoder, layers) -> list[int]:
    """Channels of each tapped layer's output, from a blank image (the encoder's layers are in eval mode)."""
    parameter = next(encoder.parameters())
    with torch.no_grad():
        training = encoder.training
        outputs = encoder.eval().taps(torch.zeros(1, 3, 64, 64, dtype=parameter.dtype, device=parameter.device),
                                      layers)
        encoder.train(training)
    return [t.shape[1] for t in outputs]


class Hypercolumns(SegmentationModel):
    """The composition, with what the method's stages need: identity, dim, classifier, hypercolumns_at."""

    def __init__(self, num_classes: int, cnn: str, layers=None, hidden: int = DEFAULT_HIDDEN, finetune: bool = False,
                 encoder_weights: WeightsSpec = None, classifier_init: str | None = None, cnn_seed: int = 0,
                 width: int = 64):
        # (checked before any weights are read)
        tapped = check_layers(DEFAULT_LAYERS[cnn] if layers is None else layers, cnn, LAYER_COUNTS[cnn])

        def keep_tapped(all_layers):
            del all_layers[tapped[-1] + 1:]
            for m in all_layers.modules():
                if isinstance(m, nn.ReLU):
                    m.inplace = False

        with torch.random.fork_rng(devices=[]):  # the same random CNN in every stage, whatever the global seed
            torch.manual_seed(cnn_seed)
            encoder, _ = build_encoder(CNN_ENCODERS[cnn], encoder_weights, layer_changes=keep_tapped, width=width)
        super().__init__(encoder, HypercolumnDecoder(encoder, num_classes, tapped, hidden, finetune), num_classes)
        self.cnn_name, self.finetune, self.width = cnn, finetune, width
        self.layers, self.dim = tapped, self.decoder.dim
        self.encoder.requires_grad_(finetune)
        self._fingerprint = fingerprint(self.encoder.layers)  # of the weights it starts from
        if classifier_init:
            self.load_classifier(classifier_init)

    @property
    def classifier(self) -> PixelMLP:
        """The per-pixel classifier (the decoder's: one module, one set of state_dict keys)."""
        return self.decoder.classifier

    def identity(self) -> dict:
        """What hypercolumns computed by this model depend on (recorded by each stage's output)."""
        return {"cnn": self.cnn_name, "layers": list(self.layers), "width": self.width, "dim": self.dim,
                "cnn_fingerprint": self._fingerprint}

    def load_classifier(self, path) -> None:
        state = load_checkpoint(path)
        if state.get("kind") != CLASSIFIER_KIND:
            raise DataError(f"classifier_init {path} is not a pre-trained hypercolumn classifier (classifier.pt "
                            f"written by 'Hypercolumns.py pretrain')")
        problems = mismatches(self.identity(), state)
        if problems:
            raise DataError(f"classifier_init {path} was pre-trained on the hypercolumns of another CNN or layer "
                            f"set: {'; '.join(problems)}. Run the extract and pretrain stages with this model's "
                            f"cnn, layers and weights, or train with the settings it was made with.")
        try:
            self.classifier.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise DataError(f"classifier_init {path} does not fit: {str(exc).splitlines()[0]} (other hidden width "
                            f"or number of classes?)") from None

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.finetune:
            self.encoder.eval()
        return self

    @torch.no_grad()
    def hypercolumns_at(self, image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(n, dim) hypercolumns of one normalised image (1, 3, H, W) at pixels (rows[i], cols[i]).

        Samples each tap where F.interpolate(bilinear, align_corners=False) to (H, W) would: pixel
        centre (i + 0.5) in input units, border values beyond the edge.
        """
        h, w = image.shape[-2:]
        grid = torch.stack([(2 * cols.float() + 1) / w - 1, (2 * rows.float() + 1) / h - 1], dim=-1)
        grid = grid.to(image.device).view(1, 1, -1, 2)
        columns = [F.grid_sample(f, grid, mode="bilinear", padding_mode="border", align_corners=False)
                   for f in self.encoder.taps(image, self.layers)]
        return torch.cat(columns, dim=1)[0, :, 0].T
