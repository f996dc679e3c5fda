"""How a user's mask pixels become class indices (own.py): the classes file (ours, CVAT's labelmap.txt,
Roboflow's _classes.csv), the plan decided from the pixel counts of all the masks (binary, index or
colour masks; in-between values snapped), and the mapping applied to each mask."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..core.files import MAX_JSON_BYTES, read_regular
from ..core.jsonfile import loads as json_loads
from .common import IGNORE_INDEX

EXAMPLES = 3                      # files named in a message
DIGITS = re.compile(r"[0-9]{1,5}")
# Binary masks saved as JPEG or antialiased: two main values, the lowest and the highest, hold this share
# of the pixels, and many values lie between them (a genuine index mask has a few classes in between)
BINARY_SHARE, STRAY_SHARE = 0.9, 0.005
SMALL_VALUES = 128  # 255 is 'ignore' (VOC's border) in masks whose other values are all below this
MAX_KEYS = 1 << 20  # distinct values or colours over all masks: more are no class masks (photos?)
COLOUR_NOISE = 40.0  # how far (RGB distance) a JPEG or blended colour may lie from a class colour or a blend


@dataclass
class LabelPlan:
    """How mask pixels become class indices: each known source value (or colour) -> a class index
    (IGNORE_INDEX: ignored); other values are snapped to the nearest known one."""
    kind: str                          # "values" or "colours"
    known: np.ndarray                  # (K,) values or (K, 3) colours
    target: np.ndarray                 # (K,) class index of each
    classes: list[str]
    palette: list[tuple[int, int, int]]
    said: list[str] = field(default_factory=list)  # what was decided, for the summary

    def label(self, pixels: np.ndarray) -> np.ndarray:
        """A mask's pixels (H x W values or H x W x 3 colours) -> H x W uint8 class indices."""
        unique, inverse = np.unique(packed(pixels), return_inverse=True)
        return self.target[nearest(unpacked(unique, pixels.ndim == 3), self.known)][inverse].reshape(
            pixels.shape[:2]).astype(np.uint8)


def packed(pixels: np.ndarray) -> np.ndarray:
    """One int64 a pixel: its value, or its colour as r * 65536 + g * 256 + b (np.unique is fast on these)."""
    if pixels.ndim == 3:
        rgb = pixels.astype(np.int64)
        return (rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]).ravel()
    return pixels.astype(np.int64).ravel()


def unpacked(keys: np.ndarray, colour: bool) -> np.ndarray:
    """(N, 3) colours or (N, 1) values of packed keys."""
    keys = np.asarray(keys, dtype=np.int64)
    return np.stack([keys // 65536, keys // 256 % 256, keys % 256], 1) if colour else keys[:, None]


def nearest(points: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Index into `known` (K values or K x 3 colours) of the nearest one to each point (Euclidean),
    in chunks so that the distances never take more than about 64 MB."""
    known = known.reshape(len(known), -1).astype(np.float64)
    chunk = max(1, (1 << 23) // max(len(known) * known.shape[1], 1))
    return np.concatenate([((points[i:i + chunk, None, :].astype(np.float64) - known[None]) ** 2).sum(-1).argmin(1)
                           for i in range(0, len(points), chunk)]) if len(points) else np.zeros(0, dtype=np.int64)


def read_classes(path: Path) -> dict:
    """A classes file: ours (JSON: {"classes": [{"name": .., "value": v} or {"name": .., "colour": [r, g, b]},
    ...], "ignore": [values or colours]}), CVAT's labelmap.txt (`name:r,g,b::` a line) or Roboflow's
    _classes.csv (`Pixel Value, Class` a line); DataError naming the file and the entry that is wrong."""
    try:
        text = read_regular(path, "--classes", MAX_JSON_BYTES).decode("utf-8")
        spec = json_loads(text) if text.lstrip().startswith(("{", "[")) else other_class_file(text, path)
    except OSError as exc:
        raise DataError(f"--classes {path} cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:  # (UnicodeDecodeError too)
        raise DataError(f"--classes {path} is not JSON ({exc})") from None
    entries = spec.get("classes") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries or len(entries) > IGNORE_INDEX:
        raise DataError(f"--classes {path} must be a JSON object with \"classes\": a list of 1 to {IGNORE_INDEX} "
                        f"entries such as {{\"name\": \"pet\", \"value\": 1}} or {{\"name\": \"road\", \"colour\": "
                        f"[128, 64, 128]}}")
    kinds = set()
    for number, entry in enumerate(entries, 1):
        named = isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"].strip() != ""
        if named and is_value(entry.get("value")) and "colour" not in entry:
            kinds.add("values")
        elif named and is_colour(entry.get("colour")) and "value" not in entry:
            kinds.add("colours")
        else:
            raise DataError(f"--classes {path}: class {number} must have a \"name\" (text) and either a \"value\" "
                            f"(0 to 65535) or a \"colour\" ([r, g, b], each 0 to 255), got {str(entry)[:80]}")
    ignore = spec.get("ignore", [])
    if len(kinds) > 1 or not isinstance(ignore, list) or len(ignore) > 256 or not all(
            is_value(v) if "values" in kinds else is_colour(v) for v in ignore):
        raise DataError(f"--classes {path}: give every class a value, or every class a colour, and \"ignore\" as a "
                        f"list of at most 256 of the same kind")
    names = [e["name"].strip() for e in entries]
    keys = [str(e.get("value", e.get("colour"))) for e in entries] + [str(v) for v in ignore]
    for what, items in (("name", names), ("value or colour", keys)):
        repeated = sorted({item for item in items if items.count(item) > 1})
        if repeated:
            raise DataError(f"--classes {path}: the {what} {repeated[0]} is given twice; each class has its own "
                            f"name and its own value or colour, and an ignored one is no class's")
    return {"kind": kinds.pop(), "names": [e["name"].strip() for e in entries],
            "known": [e.get("value", e.get("colour")) for e in entries], "ignore": ignore}


def other_class_file(text: str, path: Path) -> dict:
    """CVAT's labelmap.txt or Roboflow's _classes.csv as our classes file's JSON."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    entries = []
    for number, line in enumerate(lines, 1):
        if ":" in line:  # CVAT: name:r,g,b:parts:actions
            name, rgb = line.split(":")[:2]
            parts = rgb.split(",")
            if len(parts) != 3 or not all(DIGITS.fullmatch(p.strip()) for p in parts):
                raise DataError(f"--classes {path} line {number}: {line[:60]!r} is not CVAT's 'name:r,g,b::'")
            entries.append({"name": name, "colour": [int(p) for p in parts]})
        elif "," in line:  # Roboflow: Pixel Value, Class (a header first)
            value, name = (part.strip() for part in line.split(",", 1))
            if number == 1 and not DIGITS.fullmatch(value):
                continue
            if not DIGITS.fullmatch(value):
                raise DataError(f"--classes {path} line {number}: {line[:60]!r} is not Roboflow's 'value, class'")
            entries.append({"name": name, "value": int(value)})
        else:
            raise DataError(f"--classes {path} line {number}: {line[:60]!r} is none of: our JSON, CVAT's labelmap.txt "
                            f"('name:r,g,b::'), Roboflow's _classes.csv ('value, class')")
    return {"classes": entries}


def is_value(v) -> bool:
    return type(v) is int and 0 <= v <= 65535


def is_colour(v) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(type(x) is int and 0 <= x <= 255 for x in v)


def tally(pixels: np.ndarray, counts: dict, where: dict, name: str) -> None:
    """Add a mask's pixel counts per value (1-tuples) or colour (3-tuples) to `counts`, and its file
    name to `where` (the first few files that hold each)."""
    unique, number = np.unique(packed(pixels), return_counts=True)
    for key, n in zip(map(tuple, unpacked(unique, pixels.ndim == 3).tolist()), number.tolist()):
        counts[key] = counts.get(key, 0) + n
        files = where.setdefault(key, [])
        if len(files) < EXAMPLES:
            files.append(name)
    if len(counts) > MAX_KEYS:
        raise DataError(f"the masks hold more than {MAX_KEYS} different values or colours (up to {name}): they are no "
                        f"class masks (photos given as --masks?). Check --masks")


def plan_labels(values: dict, colours: dict, where: dict, classes: dict | None, snap_limit: float) -> LabelPlan:
    """The LabelPlan for masks holding these pixel counts (value tuples -> pixels), from the classes file
    or, without one, from the values themselves."""
    if colours and (classes is None or classes["kind"] != "colours"):
        found = ", ".join(f"{list(c)}: {n} px" for c, n in sorted(colours.items(), key=lambda kv: -kv[1])[:20])
        raise DataError(f"the masks are colour (RGB) images ({len(colours)} colours, e.g. in "
                        f"{', '.join(where[next(iter(colours))][:EXAMPLES])}); give --classes FILE with a colour for "
                        f"each class, e.g. {{\"classes\": [{{\"name\": \"background\", \"colour\": [0, 0, 0]}}, ...]}}. "
                        f"Colours found, by pixels: {found}")
    if classes is not None and classes["kind"] == "colours" and not colours:
        raise DataError("the classes file gives a colour for each class, but the masks hold values (greyscale or "
                        "palette masks): give each class its \"value\" instead")
    counts = colours or values
    total = sum(counts.values())
    said = []
    if classes is not None:
        known = [tuple(k) if isinstance(k, list) else (k,) for k in classes["known"]]
        ignore = [tuple(k) if isinstance(k, list) else (k,) for k in classes["ignore"]]
        names, target = classes["names"], list(range(len(known))) + [IGNORE_INDEX] * len(ignore)
        known = known + ignore
        said.append(f"classes from the classes file: {', '.join(names)}")
    else:
        present = sorted(counts)
        ignore = [(IGNORE_INDEX,)] if (IGNORE_INDEX,) in counts and len(present) > 2 and \
            max(v for (v,) in present if v != IGNORE_INDEX) < SMALL_VALUES else []
        classes_present = [v for v in present if v not in ignore]
        main = sorted(classes_present, key=lambda v: -counts[v])[:2]
        total_classes = sum(counts[v] for v in classes_present)
        noisy_binary = (len(classes_present) > 2 and set(main) == {classes_present[0], classes_present[-1]}
                        and sum(counts[v] for v in main) >= BINARY_SHARE * total_classes
                        and all(counts[v] < STRAY_SHARE * total_classes for v in classes_present if v not in main))
        if len(classes_present) == 2 or noisy_binary:
            known, names = sorted(main), ["background", "foreground"]
            said.append(f"binary masks: value {known[0][0]} is background, {known[1][0]} foreground")
        elif len(classes_present) < 2:
            raise DataError(f"every mask holds only the value {classes_present[0][0] if classes_present else '?'}: "
                            f"nothing to learn. Check that --masks holds the masks")
        elif len(classes_present) > IGNORE_INDEX:
            raise DataError(f"the masks hold {len(classes_present)} different values, more than the {IGNORE_INDEX} "
                            f"classes a mask can have: they are not class masks (photos? JPEG-compressed masks?); "
                            f"give --classes FILE naming the values that are classes")
        else:
            known, names = classes_present, [f"class_{v}" for (v,) in classes_present]
            said.append(f"index masks: values {', '.join(str(v) for (v,) in known)} are classes "
                        f"{', '.join(names)} (a classes file names them)")
        if ignore:
            said.append(f"value {IGNORE_INDEX} is 'ignore' (not counted in training nor scores)")
        target = list(range(len(known))) + [IGNORE_INDEX] * len(ignore)
        known = known + ignore
    exact = set(known)
    strays = {k: n for k, n in counts.items() if k not in exact}
    undeclared = {k: n for k, n in strays.items() if not in_between(k, known[:len(names)])}
    if undeclared:
        raise DataError(f"mask values neither declared nor ignored: {listed(undeclared, where)}. Declare them in "
                        f"--classes, as a class or as \"ignore\"")
    share = sum(strays.values()) / max(total, 1)
    if share > snap_limit:
        raise DataError(f"{100 * share:.2f}% of the mask pixels hold in-between values, more than --snap-limit "
                        f"{snap_limit}: {listed(strays, where)}. A JPEG or antialiased mask has a few; so many mean "
                        f"that these are no class masks of the declared classes (or raise --snap-limit)")
    if strays:
        said.append(f"snapped {100 * share:.3f}% of the mask pixels ({len(strays)} in-between values or colours) to "
                    f"the nearest class")
    palette = [tuple(int(c) for c in k) if len(k) == 3 else default_colour(i) for i, k in enumerate(known[:len(names)])]
    return LabelPlan("colours" if colours else "values", np.array(known), np.array(target), names, palette, said)


def in_between(point: tuple, classes: list[tuple]) -> bool:
    """Whether a value lies between two class values, or a colour near the line between its two
    nearest class colours (a blend, as antialiasing or JPEG make at edges) or near one of them."""
    if len(point) == 1:
        return min(classes)[0] < point[0] < max(classes)[0]
    known = np.array(classes, dtype=np.float64)
    p = np.array(point, dtype=np.float64)
    order = np.argsort(((known - p) ** 2).sum(1))
    a, b = known[order[0]], known[order[min(1, len(known) - 1)]]
    t = np.clip(np.dot(p - a, b - a) / max(np.dot(b - a, b - a), 1e-9), 0, 1)
    return bool(np.linalg.norm(p - a) <= COLOUR_NOISE or np.linalg.norm(p - (a + t * (b - a))) <= COLOUR_NOISE)


def listed(counts: dict, where: dict) -> str:
    """'9 (120 px, e.g. a.png, b.png), [1, 2, 3] (40 px, ...)' for the largest few."""
    return ", ".join(f"{list(k) if len(k) == 3 else k[0]} ({n} px, e.g. {', '.join(where[k][:EXAMPLES])})"
                     for k, n in sorted(counts.items(), key=lambda kv: -kv[1])[:8])


def default_colour(index: int) -> tuple[int, int, int]:
    """VOC's colour map: distinct colours for class indices (black for 0)."""
    r = g = b = 0
    for bit in range(8):
        r |= ((index >> 0) & 1) << (7 - bit)
        g |= ((index >> 1) & 1) << (7 - bit)
        b |= ((index >> 2) & 1) << (7 - bit)
        index >>= 3
    return r, g, b
