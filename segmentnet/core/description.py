"""What describes a trained model to inference: every entry of a checkpoint but its weights and its
training position (model name and options, classes, palette, normalisation, ignore index, dataset),
which an exported ONNX file keeps as metadata. One set of rules and one validator for both, so that
a value that passes here cannot break prediction later (an empty palette, an ignore index that is a
class, a mean that float32 turns into infinity).

ModelDescription is the one typed form of it: a checkpoint's entries (ModelDescription.read) or an
ONNX file's metadata (from_metadata) become one, validated here, and a training writes one
(entries) as Export.py does (metadata). Imports neither the models nor inference: checkpoints,
resume, Evaluate/Predict, Export and the ONNX reader all go through it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from .config import entry_problems, is_colours, is_float32, is_whole, shown
from .errors import DataError
from .jsonfile import loads as json_loads

MAX_CLASSES = 255             # class indices are stored as uint8 masks, 255 meaning 'ignored'
MAX_OPTIONS_DEPTH = 8         # model options are a flat object of numbers, names and short lists
MEAN_RANGE = (-1.0, 2.0)      # per-channel mean of pixels scaled to 0..1 (a mean outside is no image's)
STD_RANGE = (1e-4, 10.0)      # per-channel standard deviation of such pixels: a tiny one divides to infinity
REQUIRED = ("model_name", "num_classes", "mean", "std", "palette")  # what inference cannot do without
DEFAULT_IGNORE_INDEX = 255    # every dataset's (datasets.common.IGNORE_INDEX); the first release wrote none
MAX_METADATA_CHARS = 1_000_000  # an ONNX metadata value: far above what Export.py writes (256 names and colours)


def is_plain_json(value, depth: int = 0) -> bool:
    """None, a bool, a finite number, a text, or lists and text-keyed objects of them, nested at most
    MAX_OPTIONS_DEPTH deep: what a JSON object of options holds (a tensor or another object is none)."""
    if depth > MAX_OPTIONS_DEPTH:
        return False
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, (int, float)):
        return is_float32(value) or type(value) is int and abs(value) < 2 ** 63
    if isinstance(value, list):
        return all(is_plain_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain_json(v, depth + 1) for k, v in value.items())
    return False


def _channels(value, low: float, high: float) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 3 and all(
        is_float32(x) and low <= x <= high for x in value)


# entry -> (test, what it must be)
RULES = {
    "model_name": (lambda v: isinstance(v, str) and v != "", "a model name (text)"),
    "model_options": (lambda v: isinstance(v, dict) and is_plain_json(v), "a JSON object (dict) of model options"),
    "num_classes": (lambda v: is_whole(v, 1, MAX_CLASSES), f"a whole number from 1 to {MAX_CLASSES}"),
    "run_id": (lambda v: isinstance(v, str), "a run id (text)"),
    "classes": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of class names"),
    "palette": (lambda v: is_colours(v) and len(v) <= 256, "a list of at most 256 [r, g, b] colours (0 to 255)"),
    "mean": (lambda v: _channels(v, *MEAN_RANGE), f"3 numbers from {MEAN_RANGE[0]} to {MEAN_RANGE[1]} (pixels "
                                                  f"scaled to 0..1)"),
    "std": (lambda v: _channels(v, *STD_RANGE), f"3 numbers from {STD_RANGE[0]} to {STD_RANGE[1]} (pixels scaled "
                                                f"to 0..1)"),
    "ignore_index": (lambda v: is_whole(v, 0, 255), "a whole number from 0 to 255"),
    "dataset": (lambda v: isinstance(v, str) and v != "", "a dataset name (text)"),
    "config": (lambda v: isinstance(v, dict) and isinstance(v.get("data_dir", ""), str),
               "a JSON object (dict) of hyperparameters, its data_dir a text"),
}
EPOCH_RULE = (lambda v: v is None or is_whole(v), "a whole number >= 0 or null")  # an ONNX file's (a checkpoint's
# epoch is the training state's entry, checked there for a resume; inference reads it only if whole)
METADATA_KEYS = ("model_name", "model_options", "num_classes", "classes", "palette", "mean", "std", "ignore_index",
                 "dataset", "data_dir", "epoch")  # an ONNX file's description: JSON texts (model_name plain)


def description_problems(state: dict, required=REQUIRED, rules=RULES) -> list[str]:
    """'<entry> must be ..., got ...' for each entry of `state` that breaks its rule, '<entry> is
    missing' for each required one absent, and where the entries disagree with each other: fewer
    class names or colours than classes, an ignore index that is a class's index."""
    problems = entry_problems(state, rules, optional=set(rules) - set(required))
    wrong = {problem.split(" ", 1)[0] for problem in problems}
    count = state.get("num_classes") if "num_classes" not in wrong else None
    if count is None:
        return problems
    if "classes" in state and "classes" not in wrong and state["classes"] is not None \
            and len(state["classes"]) != count:
        problems.append(f"classes must name each of the {count} classes, got {len(state['classes'])} names")
    if "palette" in state and "palette" not in wrong and len(state["palette"]) < count:
        problems.append(f"palette must hold a colour for each of the {count} classes, got {len(state['palette'])}")
    ignore = state.get("ignore_index")
    if "ignore_index" in state and "ignore_index" not in wrong and ignore < count:
        problems.append(f"ignore_index must not be a class's index (0 to {count - 1}), got {shown(ignore)}")
    return problems


def check_description(state: dict, name: str, required=REQUIRED, rules=RULES) -> None:
    """DataError naming `name` (e.g. 'checkpoint runs/x/best.pt', 'ONNX file x.onnx') and every problem."""
    problems = description_problems(state, required, rules)
    missing = [p.split(" ", 1)[0] for p in problems if p.endswith(" is missing")]
    if missing:
        raise DataError(f"{name} lacks {', '.join(missing)}: it was not written by TrainSegmentNet.py")
    if problems:
        keys = ", ".join(dict.fromkeys(p.split(" ", 1)[0] for p in problems))
        raise DataError(f"{name}: the entries {keys} are not what TrainSegmentNet.py writes ({'; '.join(problems)}); "
                        f"the file is corrupt or was not written by SegmentNet")


@dataclass(frozen=True)
class ModelDescription:
    """A trained model as inference sees it. Made only through read() or from_metadata(), which
    validate, so that every instance holds values that passed RULES and agree with each other."""
    model_name: str
    num_classes: int
    mean: list[float]                  # per channel, of pixels scaled to 0..1
    std: list[float]
    palette: list[list[int]]           # [r, g, b] of each class (at least num_classes)
    model_options: dict = field(default_factory=dict)
    classes: list[str] | None = None   # a checkpoint may lack names; class_names numbers them then
    ignore_index: int = DEFAULT_IGNORE_INDEX
    dataset: str = "voc2012"
    run_id: str | None = None
    config: dict = field(default_factory=dict)  # the training's hyperparameters (an ONNX file keeps data_dir)
    epoch: int | None = None           # the epochs trained (None: not known)

    @classmethod
    def read(cls, entries: dict, name, required=REQUIRED, rules=RULES) -> ModelDescription:
        """The description in a checkpoint's (or any dict's) entries; DataError naming `name` (e.g.
        'checkpoint runs/x/best.pt') and every problem. Entries that are absent take their defaults;
        an epoch that is not a whole number is not known (None)."""
        check_description(entries, name, required, rules)
        values = {f.name: entries[f.name] for f in fields(cls) if entries.get(f.name) is not None}
        if not is_whole(values.get("epoch")):
            values.pop("epoch", None)
        return cls(**values)

    def entries(self) -> dict:
        """What a checkpoint keeps of it (the epoch is the training state's own entry)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "epoch"}

    @property
    def class_names(self) -> list[str]:
        return list(self.classes) if self.classes is not None else [f"class {i}" for i in range(self.num_classes)]

    @property
    def data_dir(self) -> str:
        """The data folder the model was trained from (where Evaluate looks for its dataset)."""
        return self.config.get("data_dir", "data")

    def metadata(self) -> dict[str, str]:
        """The ONNX metadata entries of METADATA_KEYS: JSON texts, model_name as it is."""
        values = {key: getattr(self, key) for key in METADATA_KEYS if key != "data_dir"}
        values |= {"classes": self.class_names, "data_dir": self.data_dir}
        return {key: value if key == "model_name" else json.dumps(values[key]) for key, value in values.items()}

    @classmethod
    def from_metadata(cls, meta: dict, name) -> ModelDescription:
        """The description an Export.py file's metadata holds; DataError naming the file otherwise."""
        entries = {}
        for key in METADATA_KEYS:
            if key not in meta:
                raise DataError(f"ONNX file {name}: its metadata lacks {key}; the file is damaged or was not "
                                f"written by Export.py. Export the checkpoint again")
            if key == "model_name":
                entries[key] = meta[key]
                continue
            try:
                if len(meta[key]) > MAX_METADATA_CHARS:
                    raise ValueError("too long")
                entries[key] = json_loads(meta[key])
            except ValueError:  # not JSON, or beyond jsonfile's limits
                raise DataError(f"ONNX file {name}: its metadata {key} is not JSON ({meta[key]!r:.60}); the file "
                                f"is damaged or was not written by Export.py") from None
        entries["config"] = {"data_dir": entries.pop("data_dir")}  # where a checkpoint keeps it
        return cls.read(entries, f"ONNX file {name}", rules=RULES | {"epoch": EPOCH_RULE})
