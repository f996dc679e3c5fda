"""Annotation tools' exports drawn into index masks (PNG, a class index a pixel, 255 'ignore') in a
work folder, as pairs for own.py, which prepares them like a user's folders.

- LabelMe: a folder of JSON files, one an image (`shapes` of `polygon`, `rectangle`, `circle`; later
  shapes over earlier, as labelme's own converter draws them; `line`, `linestrip` and `point` shapes
  cover no area and are counted). The image is `imagePath` (relative to the JSON file, inside the
  folder) or else the JSON's `imageData`. Classes: background (labelme's `_background_` too) and the
  labels in alphabetical order.
- COCO: an instances JSON (`images`, `annotations`, `categories`) over a folder of images. Polygons
  and RLE through pycocotools. Classes: background and the categories by id. Crowd regions become
  'ignore'; where objects overlap, the smaller one is drawn over the larger (it would vanish otherwise).

Everything read is hostile: file names stay inside their folder (no absolute paths, no '..', no links
out), coordinates must be finite numbers within MAX_COORDINATE, a shape has at most MAX_POINTS points
and an image MAX_IMAGE_POINTS, sizes are checked against Pillow's decompression-bomb limit, and the
JSON goes through jsonfile's limits (COCO's up to MAX_COCO_BYTES).
"""
from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from ..core.errors import DataError
from ..core.files import MAX_JSON_BYTES, check_inside, open_regular, plain_name, read_regular
from ..core.jsonfile import loads as json_loads
from ..core.outputs import writing
from .common import IGNORE_INDEX, Pair

MAX_COORDINATE = 1e6          # pixels: far beyond any image Pillow opens
MAX_POINTS = 100_000          # of one polygon
MAX_IMAGE_POINTS = 1_000_000  # of all the shapes of one image
MAX_COCO_BYTES = 1 << 30      # COCO's instances JSON of a large dataset is hundreds of MB
AREA_SHAPES = ("polygon", "rectangle", "circle")
BACKGROUND_LABELS = ("_background_", "background")


def read_export_json(path: Path, what: str, max_bytes: int = MAX_JSON_BYTES):
    try:
        return json_loads(read_regular(path, what, max_bytes))
    except OSError as exc:
        raise DataError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise DataError(f"{what} {path} is not JSON ({exc})") from None


def inside(folder: Path, name, where: str) -> Path:
    """folder / name for a relative path from the data (either slash), staying inside `folder`."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise DataError(f"{where}: the file name {str(name)[:60]!r} is no file name")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or parts[0] == "/" or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{where}: the file name {name[:80]!r} leaves its folder (absolute, or through '..'); only "
                        f"names inside {folder} are read")
    for part in parts:
        plain_name(part, where)
    return check_inside(folder, Path(folder, *parts), where)


def points_of(value, where: str, count: int | None = None) -> list[tuple[float, float]]:
    """[(x, y), ...] of a shape's points, checked: finite numbers within MAX_COORDINATE, at most MAX_POINTS."""
    if not isinstance(value, list) or len(value) > MAX_POINTS or (count is not None and len(value) != count):
        raise DataError(f"{where}: its points must be a list of [x, y] (at most {MAX_POINTS}"
                        f"{f', exactly {count}' if count else ''}), got {str(value)[:60]}")
    points = []
    for point in value:
        if not (isinstance(point, list) and len(point) == 2 and all(
                isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and abs(c) <= MAX_COORDINATE
                for c in point)):
            raise DataError(f"{where}: the point {str(point)[:60]} is not [x, y] of finite numbers within "
                            f"{MAX_COORDINATE:g}")
        points.append((float(point[0]), float(point[1])))
    return points


def image_from_data(data, where: str) -> Image.Image:
    """LabelMe's imageData (base64 of an image file), decoded with the decompression-bomb check."""
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None:
        raise DataError(f"{where}: its imageData is not base64 of an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            image.load()
            return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{where}: its imageData declares more pixels than any photo ({exc}); a decompression "
                        f"bomb is refused") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{where}: its imageData cannot be decoded as an image ({exc})") from None


def image_size(path: Path, where: str) -> tuple[int, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_regular(path, "image") as f, Image.open(f) as image:
                return image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{where}: {path} declares more pixels than any photo ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{where}: {path} cannot be read as an image ({exc})") from None


def declared(record: dict, width_key: str, height_key: str) -> tuple[int, int] | None:
    """The image size an annotation says it was drawn on, when it says one."""
    w, h = record.get(width_key), record.get(height_key)
    return (w, h) if type(w) is int and type(h) is int else None


def canvas_size(path: Path, size: tuple[int, int] | None, where: str) -> tuple[int, int]:
    """The size the annotation was drawn on: the image as stored, or turned by its EXIF orientation
    when the annotation says that size (own.survey then turns the image the same way)."""
    from .own import oriented_size

    image_size(path, where)  # (the header's checks: readable, no decompression bomb)
    stored, turned, _, _ = oriented_size(path)
    if size is None or size == stored:
        return stored
    if size == turned:
        return turned
    raise DataError(f"{where}: it was drawn on an image of {size[0]}x{size[1]}, but {path} is {stored[0]}x{stored[1]}; "
                    f"the annotation is of another image")


def save_mask(mask: np.ndarray, path: Path) -> None:
    with writing(path):
        Image.fromarray(mask.astype(np.uint8), mode="L").save(path, format="PNG")


# ----------------------------------------------------------------------------- LabelMe


def render_labelme(folder: Path, work: Path, said: list[str]) -> tuple[list[Pair], dict]:
    """(pairs of image and drawn mask, the classes as own.read_classes gives them) of a LabelMe folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--labelme {folder} is not a folder; give the folder of LabelMe's JSON files")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".json" and not p.is_symlink())
    if not files:
        raise DataError(f"--labelme {folder} holds no .json file (LabelMe saves one beside each image)")
    labels, skipped = set(), {}
    for path in files:  # first pass: the labels (the files are read again below: imageData can be large)
        for shape in labelme_shapes(path):
            if shape.get("shape_type") in AREA_SHAPES and shape["label"] not in BACKGROUND_LABELS:
                labels.add(shape["label"])
    if len(labels) >= IGNORE_INDEX:
        raise DataError(f"--labelme {folder}: {len(labels)} different labels; at most {IGNORE_INDEX - 1} can be classes")
    names = ["background"] + sorted(labels)
    index = {name: k for k, name in enumerate(names)} | {label: 0 for label in BACKGROUND_LABELS}
    with writing(work):
        (work / "images").mkdir()
        (work / "masks").mkdir()
    pairs = []
    for path in files:
        record = read_export_json(path, "LabelMe file")
        image_path, size = labelme_image(folder, path, record, work)
        mask = Image.new("L", size, 0)
        draw = ImageDraw.Draw(mask)
        total = 0
        for number, shape in enumerate(labelme_shapes(path, record), 1):
            kind, where = shape["shape_type"], f"LabelMe file {path}, shape {number}"
            if kind not in AREA_SHAPES:
                skipped[kind] = skipped.get(kind, 0) + 1
                continue
            points = points_of(shape.get("points"), where, 2 if kind in ("rectangle", "circle") else None)
            total += len(points)
            if total > MAX_IMAGE_POINTS:
                raise DataError(f"LabelMe file {path}: its shapes have more than {MAX_IMAGE_POINTS} points")
            fill = index[shape["label"].strip()]
            if kind == "rectangle":
                (x0, y0), (x1, y1) = points
                draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=fill)
            elif kind == "circle":
                (cx, cy), (px, py) = points
                r = math.hypot(px - cx, py - cy)
                if r > 2 * math.hypot(*size):  # (Pillow takes seconds a circle of a million pixels, in C)
                    raise DataError(f"{where}: a circle of radius {r:.0f} around an image of {size[0]}x{size[1]}")
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
            elif len(points) >= 3:
                draw.polygon(points, fill=fill)
            else:
                skipped["polygon of fewer than 3 points"] = skipped.get("polygon of fewer than 3 points", 0) + 1
        stem = plain_name(path.stem, f"LabelMe file {path}")
        save_mask(np.asarray(mask), work / "masks" / f"{stem}.png")
        pairs.append(Pair(stem, image_path, work / "masks" / f"{stem}.png", str(path)))
    said.append(f"LabelMe: {len(pairs)} annotated images, classes {', '.join(names)} (background and the labels in "
                f"alphabetical order; later shapes drawn over earlier)")
    if skipped:
        said.append("LabelMe: left out shapes that cover no area or are not drawn: "
                    + ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items())))
    return pairs, {"kind": "values", "names": names, "known": list(range(len(names))), "ignore": []}


def labelme_shapes(path: Path, record=None) -> list[dict]:
    """A LabelMe file's shapes, each with a label (text, stripped) and a shape_type (polygon when none)."""
    record = read_export_json(path, "LabelMe file") if record is None else record
    shapes = record.get("shapes") if isinstance(record, dict) else None
    if not isinstance(shapes, list):
        raise DataError(f"LabelMe file {path} has no list of \"shapes\"; it is not a LabelMe annotation")
    out = []
    for number, shape in enumerate(shapes, 1):
        if not (isinstance(shape, dict) and isinstance(shape.get("label"), str) and shape["label"].strip()):
            raise DataError(f"LabelMe file {path}, shape {number}: it has no \"label\" (text)")
        kind = shape.get("shape_type") or "polygon"
        out.append({**shape, "label": shape["label"].strip(), "shape_type": kind if isinstance(kind, str) else "?"})
    return out


def labelme_image(folder: Path, path: Path, record: dict, work: Path) -> tuple[Path, tuple[int, int]]:
    """The image of a LabelMe file: imagePath inside the folder, else imageData (written to the work folder)."""
    where = f"LabelMe file {path}"
    name = record.get("imagePath")
    if isinstance(name, str) and name:
        try:  # (a path that leaves the folder is not followed: imageData, when there, serves instead)
            candidate = inside(path.parent, name, where)
        except DataError:
            candidate = None
        if candidate is not None and candidate.is_file():
            return candidate, canvas_size(candidate, declared(record, "imageWidth", "imageHeight"), where)
    if record.get("imageData"):
        image = ImageOps.exif_transpose(image_from_data(record["imageData"], where))  # (as labelme shows it)
        target = work / "images" / f"{plain_name(path.stem, where)}.png"
        with writing(target):
            image.convert("RGB").save(target, format="PNG")
        return target, image.size
    raise DataError(f"{where}: its image {str(name)[:80]!r} is not in {folder} and it holds no imageData; put the "
                    f"image beside the JSON file (a path leaving the folder is not followed)")


# ----------------------------------------------------------------------------- COCO


def render_coco(json_path: Path, images: Path, work: Path, said: list[str]) -> tuple[list[Pair], dict]:
    """(pairs of image and drawn mask, the classes) of a COCO instances JSON over a folder of images."""
    from pycocotools import mask as coco_mask

    coco = read_export_json(json_path, "--coco", MAX_COCO_BYTES)
    where = f"--coco {json_path}"
    if not (isinstance(coco, dict) and all(isinstance(coco.get(k), list) for k in ("images", "annotations",
                                                                                   "categories"))):
        raise DataError(f"{where} is not COCO's instances JSON (lists \"images\", \"annotations\", \"categories\")")
    categories = {}
    for category in coco["categories"]:
        if not (isinstance(category, dict) and type(category.get("id")) is int and isinstance(category.get("name"), str)):
            raise DataError(f"{where}: a category {str(category)[:60]} has no whole-number id and text name")
        categories[category["id"]] = category["name"]
    if not 0 < len(categories) < IGNORE_INDEX:
        raise DataError(f"{where}: {len(categories)} categories; 1 to {IGNORE_INDEX - 1} can be classes")
    order = sorted(categories)
    index = {cid: k + 1 for k, cid in enumerate(order)}
    entries = {}
    for image in coco["images"]:
        if not (isinstance(image, dict) and type(image.get("id")) is int and isinstance(image.get("file_name"), str)):
            raise DataError(f"{where}: an image entry {str(image)[:60]} has no whole-number id and file_name")
        path = inside(images, image["file_name"], f"{where}, image {image['id']}")
        entries[image["id"]] = (path, canvas_size(path, declared(image, "width", "height"), f"{where}, image "
                                                  f"{image['id']}") if path.is_file() else None)
    by_image: dict[int, list] = {}
    for number, annotation in enumerate(coco["annotations"], 1):
        if not (isinstance(annotation, dict) and type(annotation.get("image_id")) is int
                and annotation["image_id"] in entries and type(annotation.get("category_id")) is int
                and annotation["category_id"] in categories):
            raise DataError(f"{where}: annotation {number} names no listed image_id and category_id")
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    missing = [str(path) for path, size in entries.values() if size is None]
    if missing:
        raise DataError(f"{where}: {len(missing)} image(s) it lists are not in --images {images}, e.g. "
                        f"{', '.join(missing[:3])}")
    with writing(work):
        (work / "masks").mkdir()
    pairs, crowds = [], 0
    for image_id, (path, (width, height)) in entries.items():
        regions = []  # (crowd, -area, value, RLE): decoded one at a time below
        for annotation in by_image.get(image_id, []):
            rle = coco_region(annotation, height, width, coco_mask, f"{where}, annotation {annotation.get('id')}")
            crowd = annotation.get("iscrowd") == 1
            crowds += crowd
            regions.append((crowd, -int(coco_mask.area(rle)),
                            IGNORE_INDEX if crowd else index[annotation["category_id"]], rle))
        mask = np.zeros((height, width), dtype=np.uint8)
        for _, _, value, rle in sorted(regions, key=lambda r: (r[0], r[1])):  # larger first, crowds last
            mask[coco_mask.decode(rle).astype(bool)] = value
        stem = f"{image_id}-{plain_name(path.stem, where)}"
        save_mask(mask, work / "masks" / f"{stem}.png")
        pairs.append(Pair(stem, path, work / "masks" / f"{stem}.png", f"{where}, image {image_id}"))
    names = ["background"] + [categories[cid] for cid in order]
    said.append(f"COCO: {len(pairs)} images, classes {', '.join(names)} (background and the categories by id); "
                f"{crowds} crowd region(s) ignored; overlaps: the smaller object drawn over the larger")
    return pairs, {"kind": "values", "names": names, "known": list(range(len(names))), "ignore": [IGNORE_INDEX]}


def coco_region(annotation: dict, height: int, width: int, coco_mask, where: str) -> dict:
    """The region of a COCO annotation as one RLE: polygons or RLE, checked before pycocotools sees them."""
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):
        if not segmentation or len(segmentation) > MAX_POINTS:
            raise DataError(f"{where}: its segmentation is an empty or huge list of polygons")
        polygons = []
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) % 2 or len(polygon) < 6:
                raise DataError(f"{where}: a polygon must be a flat list of x, y pairs (at least 3 points)")
            polygons.append([x for point in points_of([polygon[k:k + 2] for k in range(0, len(polygon), 2)], where)
                             for x in point])
        rles = coco_mask.frPyObjects(polygons, height, width)
    elif isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if size != [height, width] or not isinstance(counts, (str, list)) or len(counts) > height * width + 1:
            raise DataError(f"{where}: its RLE must have size [{height}, {width}] (the image's) and counts")
        if isinstance(counts, str):  # (compressed: its counts decoded here, so that they can be checked)
            counts = rle_string_counts(counts, where)
        if not all(type(c) is int and 0 <= c <= height * width for c in counts):
            raise DataError(f"{where}: its RLE counts must be whole numbers within the image")
        if sum(counts) != height * width:  # (pycocotools would leave the rest of the mask uninitialised)
            raise DataError(f"{where}: its RLE counts add up to {sum(counts)}, not the image's {height * width} pixels")
        rles = [coco_mask.frPyObjects({"size": size, "counts": counts}, height, width)]
    else:
        raise DataError(f"{where}: its segmentation is neither polygons nor RLE")
    try:
        return coco_mask.merge(rles)
    except Exception as exc:  # pycocotools' own errors share no base class
        raise DataError(f"{where}: its segmentation cannot be decoded ({str(exc)[:100]})") from None


def rle_string_counts(text: str, where: str) -> list[int]:
    """The run lengths of COCO's compressed RLE string (each a variable-length number in 6-bit
    characters from '0', 5 bits of value and a continuation bit; from the third on, a difference to
    the run two before), decoded as pycocotools' rleFrString does."""
    counts, position = [], 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text) or not 48 <= ord(text[position]) < 112 or shift > 60:
                raise DataError(f"{where}: its compressed RLE counts are damaged")
            c = ord(text[position]) - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            position += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts

