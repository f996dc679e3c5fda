"""Pretrained ImageNet backbones: torchvision's published files, from a path or from torch.hub's cache.

The option `pretrained_backbone` of a model takes
    None / false   random initialisation
    "PATH"         that file: a state_dict in torchvision's key layout (e.g. a downloaded vgg16-397923af.pth)
    true           the backbone's default file (BACKBONE_FILES), fetched by file name through
                   torch.hub.load_state_dict_from_url, which downloads it once into torch.hub's cache
                   (TORCH_HOME/hub/checkpoints) and checks the hash its name carries.
Files are always read with weights_only=True. A file that does not fit (other keys or shapes) is
refused as a whole, naming the keys that differ; nothing is half-loaded.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..errors import DataError

BackboneSpec = str | bool | None  # the type of the option pretrained_backbone (see above)
URL_ROOT = "https://download.pytorch.org/models/"
BACKBONE_FILES = {
    "vgg16": "vgg16-397923af.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
    "vgg16_bn": "vgg16_bn-6c64b313.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
    "squeezenet1_1": "squeezenet1_1-b8a52dc0.pth",
}


def hub_checkpoint_dir() -> Path:
    """Where torch.hub keeps downloaded files (TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def wants_default_file(spec) -> bool:
    return spec is True or (isinstance(spec, str) and spec.strip().lower() == "true")


def read_state_dict_file(path: Path, arch: str) -> dict:
    """torch.load(weights_only=True) with an error that names the file and what to do."""
    expected = BACKBONE_FILES[arch]
    if not path.is_file():
        raise DataError(f"pretrained_backbone file {path} not found: give the path of torchvision's {expected} "
                        f"(or a state_dict in its key layout), or true to fetch it through torch.hub")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(f"pretrained_backbone file {path} was refused: it holds objects other than tensors, so "
                        f"loading it could run code ({str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"pretrained_backbone file {path} is truncated or corrupt ({str(exc).splitlines()[0]}); "
                        f"download {URL_ROOT}{expected} again") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"pretrained_backbone file {path} is not a state_dict (a mapping of names to tensors) "
                        f"like torchvision's {expected}")
    return state


def fetch_default_file(arch: str) -> tuple[dict, Path]:
    """The default file through torch.hub's download-and-cache (hash-checked on download)."""
    name = BACKBONE_FILES[arch]
    cached = hub_checkpoint_dir() / name
    if cached.is_file():  # read it ourselves, for a clear error if it is truncated
        return read_state_dict_file(cached, arch), cached
    try:
        state = torch.hub.load_state_dict_from_url(URL_ROOT + name, map_location="cpu", progress=False,
                                                   check_hash=True, file_name=name, weights_only=True)
    except OSError as exc:  # URLError, no route, DNS, permission on the cache folder
        raise DataError(f"could not download {name} from {URL_ROOT}{name} ({exc}). Without network, copy "
                        f"{name} into {cached.parent} (torch.hub's checkpoint cache; TORCH_HOME moves it), or "
                        f"pass its path as pretrained_backbone") from None
    except RuntimeError as exc:  # torch.hub's "invalid hash value": the partial download is already removed
        raise DataError(f"the download of {name} from {URL_ROOT}{name} is damaged ({exc}); try again") from None
    return state, cached


def read_backbone_state(spec, arch: str) -> tuple[dict, Path]:
    """(state_dict, where it came from) for a pretrained_backbone option value."""
    if wants_default_file(spec):
        return fetch_default_file(arch)
    path = Path(spec).expanduser()
    return read_state_dict_file(path, arch), path


def _listed(keys, limit: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_pretrained_backbone(spec, arch: str, targets: dict[str, torch.Tensor], ignore: tuple[str, ...] = (),
                             reshape: tuple[str, ...] = ()) -> Path:
    """Copy a torchvision-layout file into `targets` (file key -> the model's tensor).

    ignore: prefixes of file keys the model does not use (ImageNet's classifier). reshape: keys whose
    tensors change shape but not size (FCN's fc6/fc7 as convolutions). BatchNorm's num_batches_tracked
    may be absent, as in torchvision's older files. Either every tensor fits or nothing is copied.
    """
    state, source = read_backbone_state(spec, arch)
    used = {k: v for k, v in state.items() if not k.startswith(ignore)}
    missing = [k for k in targets if k not in used and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in used if k not in targets]
    wrong_shape = [f"{k} {tuple(used[k].shape)} vs {tuple(t.shape)}" for k, t in targets.items()
                   if k in used and used[k].shape != t.shape
                   and not (k in reshape and used[k].numel() == t.numel())]
    if missing or unexpected or wrong_shape:
        problems = [f"{len(missing)} keys missing ({_listed(missing)})" if missing else "",
                    f"{len(unexpected)} keys unexpected ({_listed(unexpected)})" if unexpected else "",
                    f"{len(wrong_shape)} shapes differ, file vs model ({_listed(wrong_shape, 2)})" if wrong_shape else ""]
        raise DataError(f"pretrained_backbone file {source} does not fit the {arch} backbone: "
                        + "; ".join(p for p in problems if p) + f". It needs torchvision's {BACKBONE_FILES[arch]} "
                        f"(or a state_dict in its key layout) and the model's default width.")
    with torch.no_grad():
        for key, target in targets.items():
            if key in used:
                target.copy_(used[key].reshape(target.shape))
    return source
