"""Pretrained weights by torchvision's names, from torch.hub's cache or from a file.

`encoder_weights` (and a segmentation model's `weights`) takes
    None           random initialisation
    "NAME"         a member of the model's torchvision Weights enum ("IMAGENET1K_V1", "DEFAULT", ...):
                   its file is fetched once through torch.hub.load_state_dict_from_url into torch.hub's
                   cache (TORCH_HOME/hub/checkpoints), its hash checked, and read from there afterwards
    "PATH"         that file: a state_dict in torchvision's key layout of the model
Files are always read with weights_only=True. A file that does not fit (other keys or shapes) is
refused as a whole, naming the keys that differ; nothing is half-loaded.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..core.errors import DataError
from ..core.files import open_regular
from ..core.weights import is_weights

WeightsSpec = str | None  # the type of the options encoder_weights and weights (see above)


def hub_checkpoint_dir() -> Path:
    """Where torch.hub keeps downloaded files (TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_names(model_name: str) -> list[str]:
    import torchvision

    return ["DEFAULT", *torchvision.models.get_model_weights(model_name).__members__]


def torchvision_weights(model_name: str, spec: str):
    """The member of the model's Weights enum named `spec`, or None when spec is not such a name."""
    import torchvision

    enum = torchvision.models.get_model_weights(model_name)
    return enum.__members__.get(spec) if spec != "DEFAULT" else enum.DEFAULT


def read_state_dict_file(path: Path, what: str, expected: str) -> dict:
    """torch.load(weights_only=True) with an error that names the file and what to do."""
    if not path.exists():
        raise DataError(f"{what} file {path} not found: give the path of {expected} (or a state_dict in its key "
                        f"layout), or a name of torchvision's weights such as IMAGENET1K_V1")
    try:
        with open_regular(path, f"{what} file") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except DataError:  # (a RuntimeError too: open_regular's refusal is not a corrupt file)
        raise
    except pickle.UnpicklingError as exc:
        raise DataError(f"{what} file {path} was refused: it holds objects other than tensors, so "
                        f"loading it could run code ({str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{what} file {path} is truncated or corrupt ({str(exc).splitlines()[0]}); "
                        f"download {expected} again") from None
    if not is_weights(state):
        raise DataError(f"{what} file {path} is not a state_dict (a mapping of names to dense tensors of real "
                        f"numbers) like {expected}")
    return state


def fetch_weights(weights, what: str) -> tuple[dict, Path]:
    """A torchvision Weights member's state_dict through torch.hub's download-and-cache (hash-checked)."""
    url = weights.url
    name = Path(urlparse(url).path).name
    cached = hub_checkpoint_dir() / name
    if cached.is_file():  # read it ourselves, for a clear error if it is truncated
        return read_state_dict_file(cached, what, url), cached
    try:
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True,
                                                   file_name=name, weights_only=True)
    except OSError as exc:  # URLError, no route, DNS, permission on the cache folder
        raise DataError(f"could not download {name} from {url} ({exc}). Without network, copy {name} into "
                        f"{cached.parent} (torch.hub's checkpoint cache; TORCH_HOME moves it), or pass its path "
                        f"as {what}") from None
    except RuntimeError as exc:  # torch.hub's "invalid hash value": the partial download is already removed
        raise DataError(f"the download of {name} from {url} is damaged ({exc}); try again") from None
    return state, cached


def read_weights(spec: str, model_name: str, what: str) -> tuple[dict, Path]:
    """(state_dict, where it came from) for an encoder_weights / weights option value."""
    weights = torchvision_weights(model_name, spec)
    if weights is not None:
        return fetch_weights(weights, what)
    path = Path(spec).expanduser()
    if not path.exists() and Path(spec).suffix not in (".pth", ".pt") and "/" not in spec:
        raise DataError(f"{what} {spec!r} is neither a name of {model_name}'s torchvision weights "
                        f"({', '.join(weights_names(model_name))}) nor an existing file")
    default = torchvision_weights(model_name, "DEFAULT")
    return read_state_dict_file(path, what, f"torchvision's {model_name} weights ({default.url})"), path


def _listed(keys, limit: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def copy_state(state: dict, targets: dict[str, torch.Tensor], source, what: str, fits: str,
               ignore: tuple[str, ...] = (), reshape: tuple[str, ...] = ()) -> None:
    """Copy `state` into `targets` (key -> the model's tensor): every tensor fits, or nothing is copied.

    ignore: prefixes of file keys the model does not use. reshape: keys whose tensors change shape but
    not size (FCN's fc6/fc7 as convolutions). BatchNorm's num_batches_tracked may be absent, as in
    torchvision's older files.
    """
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
        raise DataError(f"{what} file {source} does not fit {fits}: " + "; ".join(p for p in problems if p)
                        + f". It needs torchvision's weights of {fits} (or a state_dict in their key layout).")
    broken = [k for k in targets if k in used and used[k].is_floating_point() and not torch.isfinite(used[k]).all()]
    if broken:  # (e.g. torchvision's VGG16 IMAGENET1K_FEATURES, whose classifier is NaN)
        raise DataError(f"{what} file {source} has NaN or infinite values in {len(broken)} tensor(s) the model "
                        f"would use ({_listed(broken)}): those weights cannot be used for {fits}")
    with torch.no_grad():
        for key, target in targets.items():
            if key in used:
                target.copy_(used[key].reshape(target.shape))


def load_encoder_weights(spec: str, name: str, model: nn.Module, unused: tuple[str, ...] = ()) -> Path:
    """Load torchvision weights (a name or a file) into the torchvision model `name`, except the keys
    under `unused` (its classifier, which an encoder drops)."""
    state, source = read_weights(spec, name, "encoder_weights")
    targets = {k: v for k, v in model.state_dict().items() if not k.startswith(unused)}
    copy_state(state, targets, source, "encoder_weights", f"the {name} encoder", ignore=unused)
    return source
