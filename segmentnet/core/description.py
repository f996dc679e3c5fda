"""What describes a trained model to inference: every entry of a checkpoint but its weights and its
training position (model name and options, classes, palette, normalisation, ignore index, dataset),
which an exported ONNX file keeps as metadata. One set of rules and one validator for both, so that
a value that passes here cannot break prediction later (an empty palette, an ignore index that is a
class, a mean that float32 turns into infinity).

Imports neither the models nor inference: checkpoints, resume, Evaluate/Predict and the ONNX reader
all validate through it.
"""
from __future__ import annotations

from .config import entry_problems, is_colours, is_float32, is_whole, shown
from .errors import DataError

MAX_CLASSES = 255             # class indices are stored as uint8 masks, 255 meaning 'ignored'
MAX_OPTIONS_DEPTH = 8         # model options are a flat object of numbers, names and short lists
MEAN_RANGE = (-1.0, 2.0)      # per-channel mean of pixels scaled to 0..1 (a mean outside is no image's)
STD_RANGE = (1e-4, 10.0)      # per-channel standard deviation of such pixels: a tiny one divides to infinity
REQUIRED = ("model_name", "num_classes", "mean", "std", "palette")  # what inference cannot do without


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


def description_problems(state: dict, required=REQUIRED) -> list[str]:
    """'<entry> must be ..., got ...' for each entry of `state` that breaks its rule, '<entry> is
    missing' for each required one absent, and where the entries disagree with each other: fewer
    class names or colours than classes, an ignore index that is a class's index."""
    problems = entry_problems(state, RULES, optional=set(RULES) - set(required))
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


def check_description(state: dict, name: str, required=REQUIRED) -> None:
    """DataError naming `name` (e.g. 'checkpoint runs/x/best.pt', 'ONNX file x.onnx') and every problem."""
    problems = description_problems(state, required)
    missing = [p.split(" ", 1)[0] for p in problems if p.endswith(" is missing")]
    if missing:
        raise DataError(f"{name} lacks {', '.join(missing)}: it was not written by TrainSegmentNet.py")
    if problems:
        keys = ", ".join(dict.fromkeys(p.split(" ", 1)[0] for p in problems))
        raise DataError(f"{name}: the entries {keys} are not what TrainSegmentNet.py writes ({'; '.join(problems)}); "
                        f"the file is corrupt or was not written by SegmentNet")
