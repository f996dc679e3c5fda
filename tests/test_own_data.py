"""A user's own folders of images and masks -> data/<name>/ (DataSeparate.py --images --masks), then
every script with --dataset <name>."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import realdata, run_script, tiny_train_config
from PIL import Image, ImageOps

import DataSeparate

SIZE = (40, 30)  # width, height of the made images


def snapshot(folder: Path) -> dict:
    """Every file below `folder` with its bytes' digest: the user's folders must stay as they were."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}


def photo(seed: int, size=SIZE) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def blob(values=(0, 255), size=SIZE, seed: int = 0) -> np.ndarray:
    """A mask: the first value, with a rectangle of each further value."""
    rng = np.random.default_rng(seed)
    mask = np.full((size[1], size[0]), values[0], dtype=np.int64)
    for k, value in enumerate(values[1:]):
        top, left = rng.integers(0, size[1] // 2), rng.integers(0, size[0] // 2)
        mask[top:top + size[1] // 3 + k, left:left + size[0] // 3 + k] = value
    return mask


def user_folders(tmp_path: Path, count: int = 6, values=(0, 255), mask_name="{}.png", image_name="{}.jpg",
                 mask_array=None, size=SIZE) -> tuple[Path, Path]:
    images, masks = tmp_path / "photos", tmp_path / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo(i, size).save(images / image_name.format(f"p{i}"))
        array = blob(values, size, seed=i) if mask_array is None else mask_array(i)
        Image.fromarray(array.astype(np.uint16 if array.max() > 255 else np.uint8)).save(  # (RGB, L or I;16)
            masks / mask_name.format(f"p{i}"))
    return images, masks


def separate(tmp_path, images, masks, *flags, name="mine"):
    """DataSeparate.main on the user's folders: (exit status, stderr)."""
    return run_script(DataSeparate.main, ["--dataset", name, "--images", images, "--masks", masks,
                                          "--data-dir", tmp_path / "data", "--workers", "1", *flags])


def prepared(tmp_path, name="mine") -> tuple[dict, dict]:
    """(dataset.json, {split: [mask arrays]}) of data/<name>."""
    root = tmp_path / "data" / name
    info = json.loads((root / "dataset.json").read_text())
    masks = {split: [np.array(Image.open(p)) for p in sorted((root / split / "masks").iterdir())]
             for split in info["counts"] if (root / split / "masks").is_dir()}
    return info, masks


@pytest.mark.parametrize("values", [(0, 255), (0, 1), (3, 7)])
def test_binary_masks_of_any_two_values_become_background_and_foreground(tmp_path, values):
    images, masks = user_folders(tmp_path, values=values)
    before = snapshot(tmp_path)
    status, err = separate(tmp_path, images, masks)
    assert status == 0, err
    info, prepared_masks = prepared(tmp_path)
    assert info["classes"] == ["background", "foreground"] and info["counts"] == {"train": 5, "val": 1}
    assert f"binary masks: value {values[0]} is background, {values[1]} foreground" in info["source"]["decided"]
    expected = {name: (blob(values, seed=int(name[1:])) == values[1]).astype(np.uint8)
                for name in (p.stem for p in (tmp_path / "data" / "mine" / "train" / "masks").iterdir())}
    for path in (tmp_path / "data" / "mine" / "train" / "masks").iterdir():
        assert np.array_equal(np.array(Image.open(path)), expected[path.stem])   # pixel for pixel
    assert snapshot(tmp_path / "photos") == {k[len("photos/"):]: v for k, v in before.items() if k.startswith("photos")}
    assert snapshot(tmp_path / "masks") == {k[len("masks/"):]: v for k, v in before.items() if k.startswith("masks")}


def test_jpeg_masks_are_snapped_to_the_nearest_value_within_the_limit(tmp_path, capsys):
    images, masks = user_folders(tmp_path, mask_name="{}.jpg", size=(160, 120))  # JPEG: in-between values at edges
    values = np.unique(np.concatenate([np.array(Image.open(p)).ravel() for p in masks.iterdir()]))
    assert len(values) > 2
    status, err = separate(tmp_path, images, masks, "--snap-limit", "0")
    assert status == 2 and "of the mask pixels hold in-between values, more than --snap-limit 0.0" in err, err
    assert not (tmp_path / "data" / "mine").exists()
    assert DataSeparate.main(["--dataset", "mine", "--images", str(images), "--masks", str(masks),
                              "--data-dir", str(tmp_path / "data"), "--workers", "1", "--snap-limit", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "binary masks: value 0 is background, 255 foreground" in out and "snapped" in out
    info, prepared_masks = prepared(tmp_path)
    assert all(set(np.unique(m).tolist()) == {0, 1} for m in prepared_masks["train"])
    first = sorted((tmp_path / "data" / "mine" / "train" / "masks").iterdir())[0]
    truth = blob((0, 255), (160, 120), seed=int(first.stem[1:])) == 255
    assert (np.array(Image.open(first)) == truth).mean() > 0.99   # snapped back to the drawn shapes


def test_index_masks_name_their_values_and_255_is_ignored(tmp_path):
    images, masks = user_folders(tmp_path, values=(0, 2, 5, 255))
    assert separate(tmp_path, images, masks)[0] == 0
    info, prepared_masks = prepared(tmp_path)
    assert info["classes"] == ["class_0", "class_2", "class_5"]
    lut = {0: 0, 2: 1, 5: 2, 255: 255}
    name = sorted((tmp_path / "data" / "mine" / "train" / "masks").iterdir())[0].stem
    source = blob((0, 2, 5, 255), seed=int(name[1:]))
    assert np.array_equal(prepared_masks["train"][0], np.vectorize(lut.get)(source))


def colour_mask(i):
    mask = np.zeros((SIZE[1], SIZE[0], 3), dtype=np.uint8)
    mask[:, : SIZE[0] // 2] = (128, 64, 128)          # road
    mask[: SIZE[1] // 3, :] = (70, 130, 180)          # sky
    mask[0, 0] = (255, 255, 255)                      # void
    return mask


def test_colour_masks_need_a_colour_per_class_and_map_exactly(tmp_path):
    images, masks = user_folders(tmp_path, mask_array=colour_mask)
    status, err = separate(tmp_path, images, masks)
    assert status == 2 and "the masks are colour (RGB) images (4 colours" in err, err
    assert "[128, 64, 128]: 2400 px" in err and "[70, 130, 180]" in err       # counted over the 6 masks
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classes": [{"name": "other", "colour": [0, 0, 0]},
                                               {"name": "road", "colour": [128, 64, 128]},
                                               {"name": "sky", "colour": [70, 130, 180]}],
                                   "ignore": [[255, 255, 255]]}))
    assert separate(tmp_path, images, masks, "--classes", classes)[0] == 0
    info, prepared_masks = prepared(tmp_path)
    assert info["classes"] == ["other", "road", "sky"]
    assert info["palette"][:3] == [[0, 0, 0], [128, 64, 128], [70, 130, 180]]
    expected = np.zeros((SIZE[1], SIZE[0]), dtype=np.uint8)
    expected[:, : SIZE[0] // 2] = 1
    expected[: SIZE[1] // 3, :] = 2
    expected[0, 0] = 255
    assert all(np.array_equal(m, expected) for m in prepared_masks["train"])


def test_a_value_neither_declared_nor_ignored_is_named_with_its_pixels_and_files(tmp_path):
    images, masks = user_folders(tmp_path, values=(0, 1, 9))
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classes": [{"name": "background", "value": 0}, {"name": "pet", "value": 1}]}))
    status, err = separate(tmp_path, images, masks, "--classes", classes)
    assert status == 2 and "mask values neither declared nor ignored: 9 (" in err and "px, e.g. p" in err, err
    classes.write_text(json.dumps({"classes": [{"name": "background", "value": 0}, {"name": "pet", "value": 1}],
                                   "ignore": [9]}))
    assert separate(tmp_path, images, masks, "--classes", classes)[0] == 0
    info, prepared_masks = prepared(tmp_path)
    assert info["classes"] == ["background", "pet"] and 255 in np.unique(np.concatenate(
        [m.ravel() for m in prepared_masks["train"]]))


def test_unpaired_files_are_named_and_left_out_only_when_asked(tmp_path, capsys):
    images, masks = user_folders(tmp_path, count=5, mask_name="{}_mask.png")  # x.jpg with x_mask.png
    photo(9).save(images / "lonely.jpg")
    Image.fromarray(blob(seed=1).astype(np.uint8)).save(masks / "orphan.png")
    (images / "notes.txt").write_text("not an image")
    (images / ".DS_Store").write_bytes(b"\x00\x01")
    photo(8).save(images / "really_a_png.jpg", format="PNG")  # an image by its content, whatever its suffix
    Image.fromarray(blob(seed=2).astype(np.uint8)).save(masks / "really_a_png.png")
    status, err = separate(tmp_path, images, masks)
    assert status == 2 and "1 image(s) without a mask (e.g. lonely.jpg)" in err, err
    assert "1 mask(s) without an image (e.g. orphan.png)" in err
    assert DataSeparate.main(["--dataset", "mine", "--images", str(images), "--masks", str(masks),
                              "--data-dir", str(tmp_path / "data"), "--workers", "1", "--skip-unpaired"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 file(s)" in out and ".DS_Store" in out and "notes.txt" in out
    assert "left out 1 image(s) without a mask" in out
    info, _ = prepared(tmp_path)
    assert sum(info["counts"].values()) == 6  # 5 with x_mask.png, and the PNG named .jpg
    written = {p.name for split in ("train", "val") for p in (tmp_path / "data" / "mine" / split / "images").iterdir()}
    assert "really_a_png.png" in written   # a PNG named .jpg is rewritten as what it is


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_images_of_every_mode_become_rgb(tmp_path, mode):
    images, masks = user_folders(tmp_path, count=3)
    for path in list(images.iterdir()):
        picture = photo(int(path.stem[1:]))
        if mode == "I;16":
            picture = Image.fromarray(np.asarray(picture.convert("L")).astype(np.uint16) * 257)  # (mode I;16)
        else:
            picture = picture.convert(mode)
        path.unlink()
        picture.save(path.with_suffix(".jpg" if mode in ("L", "CMYK") else ".png"))
    assert separate(tmp_path, images, masks)[0] == 0
    info, _ = prepared(tmp_path)
    assert any(f"of mode {mode} " in line for line in info["source"]["decided"]), info["source"]["decided"]
    for split in ("train", "val"):
        for path in (tmp_path / "data" / "mine" / split / "images").iterdir():
            with Image.open(path) as image, Image.open(next(images.glob(f"{path.stem}.*"))) as source:
                assert image.mode == "RGB" and image.size == SIZE
                if mode in ("L", "RGBA", "P"):  # (the same pixels, as Pillow makes them RGB)
                    assert np.array_equal(np.asarray(image), np.asarray(source.convert("RGB")))


def test_an_image_turned_by_exif_fits_its_mask(tmp_path):
    images, masks = user_folders(tmp_path, count=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: shown turned 90 degrees, as the annotation tool drew the mask
    photo(0).save(images / "p0.jpg", exif=exif)
    Image.fromarray(blob(seed=0, size=(SIZE[1], SIZE[0])).astype(np.uint8)).save(masks / "p0.png")
    assert separate(tmp_path, images, masks)[0] == 0
    info, _ = prepared(tmp_path)
    assert "1 image(s) turned by their EXIF orientation, as their masks were drawn" in info["source"]["decided"]
    written = next((tmp_path / "data" / "mine").glob("*/images/p0.*"))
    with Image.open(images / "p0.jpg") as original:
        turned = np.asarray(ImageOps.exif_transpose(original).convert("RGB"))
    assert turned.shape == (SIZE[0], SIZE[1], 3) and np.array_equal(np.asarray(Image.open(written)), turned)


def test_masks_of_another_size_are_refused_or_resized_when_asked(tmp_path):
    images, masks = user_folders(tmp_path, count=4)
    small = blob(seed=0, size=(20, 15)).astype(np.uint8)
    Image.fromarray(small).save(masks / "p0.png")            # half size, same aspect ratio
    status, err = separate(tmp_path, images, masks)
    assert status == 2 and "1 mask(s) have another size than their image, e.g. p0.png 20x15 for p0.jpg 40x30" in err
    assert "--resize-masks" in err
    assert separate(tmp_path, images, masks, "--resize-masks")[0] == 0
    mask = np.array(Image.open(next((tmp_path / "data" / "mine").glob("*/masks/p0.png"))))
    assert mask.shape == (30, 40) and np.array_equal(mask[::2, ::2], (small == 255).astype(np.uint8))
    Image.fromarray(blob(seed=0, size=(20, 20)).astype(np.uint8)).save(masks / "p1.png")   # another aspect
    status, err = separate(tmp_path, images, masks, "--resize-masks", "--force")
    assert status == 2 and "p1.png 20x20 for p1.jpg 40x30" in err, err


def test_own_splits_test_images_and_names(tmp_path):
    images, masks = user_folders(tmp_path, count=3)
    val_images, val_masks = user_folders(tmp_path / "v", count=2, image_name="v{}.jpg", mask_name="v{}.png")
    tests = tmp_path / "unlabelled"
    tests.mkdir()
    photo(5).save(tests / "t0.jpg")
    assert separate(tmp_path, images, masks, "--val-images", val_images, "--val-masks", val_masks,
                    "--test-images", tests)[0] == 0
    info, _ = prepared(tmp_path)
    assert info["counts"] == {"train": 3, "val": 2, "test": 1}
    assert not (tmp_path / "data" / "mine" / "test" / "masks").exists()
    for name, message in (("voc2012", "--dataset voc2012 is a built-in dataset"), ("../up", "contains a path separator")):
        status, err = separate(tmp_path, images, masks, name=name)
        assert status == 2 and message in err and "Traceback" not in err, err
    status, err = separate(tmp_path, images, masks, "--val-images", val_images)
    assert status == 2 and "give --val-images and --val-masks together" in err


@pytest.mark.parametrize("text,message", [
    ("[" * 100_000 + "]" * 100_000, "is not JSON (arrays or objects nested deeper than 64 levels)"),
    ('{"classes": []}', 'must be a JSON object with "classes": a list of 1 to 255 entries'),
    ('{"classes": [{"name": "a", "value": -1}]}', "class 1 must have a \"name\" (text) and either a \"value\""),
    ('{"classes": [{"name": "a", "value": 1}, {"name": "b", "colour": [1, 2, 3]}]}', "give every class a value, or"),
])
def test_a_bad_classes_file_is_named(tmp_path, text, message):
    images, masks = user_folders(tmp_path, count=2)
    (tmp_path / "classes.json").write_text(text)
    status, err = separate(tmp_path, images, masks, "--classes", tmp_path / "classes.json")
    assert status == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "data" / "mine").exists()


def test_every_script_takes_the_prepared_name(tmp_path):
    import Evaluate
    import Predict
    from segmentnet.training.engine import train

    images, masks = user_folders(tmp_path, count=6)
    assert separate(tmp_path, images, masks, name="pets")[0] == 0
    summary = train(tiny_train_config(tmp_path / "data", tmp_path / "run", dataset="pets", crop_size=24, batch_size=2))
    assert summary["epoch"] == 1
    status, err = run_script(Evaluate.main, [tmp_path / "run" / "best.pt", "--no-progress", "--workers", "0"])
    assert status == 0, err
    assert json.loads((tmp_path / "run" / "eval-best-val.json").read_text())["dataset"] == "pets"
    status, err = run_script(Predict.main, [tmp_path / "run" / "best.pt", images, "--out", tmp_path / "pred",
                                            "--no-progress"])
    assert status == 0 and len(list((tmp_path / "pred" / "masks").iterdir())) == 6, err
    from segmentnet.core.errors import ConfigError
    with pytest.raises(ConfigError, match="dataset 'cats' is unknown: not a built-in one"):
        train(tiny_train_config(tmp_path / "data", tmp_path / "run2", dataset="cats"))


def test_humanseg_folder_end_to_end(tmp_path, capsys):
    """The real folder of ../shared/realdata/humanseg: 290 photos, masks 0/255, 198 masks smaller."""
    folder = realdata("humanseg")
    argv = ["--dataset", "humanseg", "--images", str(folder / "Training_Images"), "--masks",
            str(folder / "Ground_Truth"), "--data-dir", str(tmp_path / "data"), "--workers", "1"]
    status, err = run_script(DataSeparate.main, argv)
    assert status == 2 and "198 mask(s) have another size than their image" in err, err
    assert DataSeparate.main(argv + ["--resize-masks"]) == 0
    out = capsys.readouterr().out
    for line in ("train 246, val 44", "binary masks: value 0 is background, 255 foreground",
                 "images converted to RGB PNG: 2 of mode L (JPEG)", "198 mask(s) resized to their image"):
        assert line in out, out
    info, prepared_masks = prepared(tmp_path, "humanseg")
    assert info["classes"] == ["background", "foreground"]
    assert all(set(np.unique(m).tolist()) <= {0, 1} for m in prepared_masks["val"])


def test_cvat_labelmap_and_roboflow_classes_files(tmp_path):
    images, masks = user_folders(tmp_path, mask_array=colour_mask)
    (tmp_path / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\n"
                                           "road:128,64,128::\nsky:70,130,180::\nvoid:255,255,255::\n")
    assert separate(tmp_path, images, masks, "--classes", tmp_path / "labelmap.txt")[0] == 0
    info, prepared_masks = prepared(tmp_path)
    assert info["classes"] == ["background", "road", "sky", "void"]
    assert prepared_masks["train"][0][0, 0] == 3 and prepared_masks["train"][0][-1, 0] == 1
    images, masks = user_folders(tmp_path / "rf", values=(0, 1, 2))
    (tmp_path / "_classes.csv").write_text("Pixel Value, Class\n0, background\n1, cat\n2, dog\n")
    status, err = separate(tmp_path / "rf", images, masks, "--classes", tmp_path / "_classes.csv")
    assert status == 0, err
    assert prepared(tmp_path / "rf")[0]["classes"] == ["background", "cat", "dog"]
    (tmp_path / "_classes.csv").write_text("Pixel Value, Class\n0, background\n², cat\n")
    status, err = separate(tmp_path / "rf", images, masks, "--classes", tmp_path / "_classes.csv", "--force")
    assert status == 2 and "line 3: '², cat' is not Roboflow's 'value, class'" in err, err


# ----------------------------------------------------------------------------- annotation tools' exports


def labelme_file(folder: Path, stem: str, shapes: list, image_path=None, image_data=None, size=SIZE) -> Path:
    record = {"version": "5.4.1", "shapes": [{"label": label, "points": points, "shape_type": kind}
                                            for label, kind, points in shapes],
              "imagePath": image_path if image_path is not None else f"{stem}.jpg", "imageData": image_data,
              "imageHeight": size[1], "imageWidth": size[0]}
    (folder / f"{stem}.json").write_text(json.dumps(record))
    return folder / f"{stem}.json"


def labelme_folder(tmp_path: Path, count: int = 5) -> Path:
    folder = tmp_path / "labelme"
    folder.mkdir()
    for i in range(count):
        photo(i).save(folder / f"p{i}.jpg")
        labelme_file(folder, f"p{i}", [("dog", "polygon", [[2, 2], [20, 2], [20, 20], [2, 20]]),
                                       ("cat", "rectangle", [[10, 10], [30, 25]]),       # over the dog
                                       ("ball", "circle", [[35, 5], [35, 8]]),
                                       ("leash", "line", [[0, 0], [5, 5]])])
    return folder


def test_labelme_shapes_are_drawn_later_over_earlier(tmp_path, capsys):
    import base64
    import io

    folder = labelme_folder(tmp_path)
    buffer = io.BytesIO()
    photo(9).save(buffer, format="PNG")
    labelme_file(folder, "embedded", [("cat", "polygon", [[0, 0], [10, 0], [10, 10]])], image_path="gone.jpg",
                 image_data=base64.b64encode(buffer.getvalue()).decode())
    before = snapshot(folder)
    assert DataSeparate.main(["--dataset", "mine", "--labelme", str(folder), "--data-dir", str(tmp_path / "data"),
                              "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "classes background, ball, cat, dog" in out
    assert "left out shapes that cover no area or are not drawn: 5 line" in out
    info, _ = prepared(tmp_path)
    assert info["classes"] == ["background", "ball", "cat", "dog"] and sum(info["counts"].values()) == 6
    mask = np.array(Image.open(next((tmp_path / "data" / "mine").glob("*/masks/p0.png"))))
    assert mask[5, 5] == 3 and mask[15, 15] == 2 and mask[24, 29] == 2 and mask[5, 35] == 1 and mask[28, 2] == 0
    assert snapshot(folder) == before and not list((tmp_path / "data").glob(".mine.partial-*"))


@pytest.mark.parametrize("case,message", [
    ("image outside", "its image '../outside.jpg' is not in"),
    ("absolute image", "its image '/etc/hostname' is not in"),
    ("nan point", "is not [x, y] of finite numbers"),
    ("huge point", "is not [x, y] of finite numbers"),
    pytest.param("millions of points", "its points must be a list of [x, y] (at most 100000", marks=pytest.mark.slow),
    ("bomb in imageData", "its imageData declares more pixels than any photo"),
    ("deep json", "is not JSON (arrays or objects nested deeper than 64 levels)"),
    ("no label", "shape 1: it has no \"label\""),
])
def test_hostile_labelme_files_are_refused_naming_them(tmp_path, case, message):
    import base64

    folder = labelme_folder(tmp_path, count=2)
    photo(7).save(tmp_path / "outside.jpg")
    square = [[1, 1], [5, 1], [5, 5]]
    if case == "image outside":
        labelme_file(folder, "x", [("cat", "polygon", square)], image_path="../outside.jpg")
    elif case == "absolute image":
        labelme_file(folder, "x", [("cat", "polygon", square)], image_path="/etc/hostname")
    elif case == "nan point":
        (folder / "x.json").write_text('{"shapes": [{"label": "cat", "points": [[1, NaN], [2, 2], [3, 1]]}], '
                                       '"imagePath": "p0.jpg"}')
    elif case == "huge point":
        labelme_file(folder, "x", [("cat", "polygon", [[1, 1], [1e300, 2], [3, 1]])], image_path="p0.jpg")
    elif case == "millions of points":
        labelme_file(folder, "x", [("cat", "polygon", [[1, 1]] * 1_000_001)], image_path="p0.jpg")
    elif case == "bomb in imageData":
        from conftest import png_declaring

        labelme_file(folder, "x", [("cat", "polygon", square)], image_path="gone.jpg",  # 900 M pixels in bytes
                     image_data=base64.b64encode(png_declaring(30000, 30000, rgb=True)).decode())
    elif case == "deep json":
        (folder / "x.json").write_text("[" * 100_000 + "]" * 100_000)
    else:
        (folder / "x.json").write_text('{"shapes": [{"points": [[1, 1], [2, 2], [3, 1]]}], "imagePath": "p0.jpg"}')
    before = snapshot(tmp_path)
    status, err = run_script(DataSeparate.main, ["--dataset", "mine", "--labelme", folder,
                                                 "--data-dir", tmp_path / "data", "--workers", "1"])
    assert status == 2 and message in err and "Traceback" not in err, err
    assert snapshot(tmp_path) == before   # nothing written: no data/mine, no drawing folder left


def coco_export(tmp_path: Path, annotations=None, images=None) -> tuple[Path, Path]:
    folder = tmp_path / "coco_images"
    folder.mkdir(exist_ok=True)
    for i in range(4):
        photo(i).save(folder / f"{i:012d}.jpg")
    big = [2, 2, 30, 2, 30, 25, 2, 25]          # a large box ...
    small = [10, 10, 16, 10, 16, 16, 10, 16]    # ... and a small one inside it, listed first
    rle = {"size": [SIZE[1], SIZE[0]], "counts": [0, SIZE[0] * SIZE[1] // 2, SIZE[0] * SIZE[1] // 2]}
    record = {"images": images or [{"id": i, "file_name": f"{i:012d}.jpg", "width": SIZE[0], "height": SIZE[1]}
                                   for i in range(4)],
              "categories": [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}],
              "annotations": annotations if annotations is not None else [
                  {"id": 1, "image_id": 0, "category_id": 3, "segmentation": [small], "iscrowd": 0},
                  {"id": 2, "image_id": 0, "category_id": 18, "segmentation": [big], "iscrowd": 0},
                  {"id": 3, "image_id": 1, "category_id": 18, "segmentation": rle, "iscrowd": 1},
                  {"id": 4, "image_id": 2, "category_id": 3, "segmentation": [big], "iscrowd": 0}]}
    (tmp_path / "instances.json").write_text(json.dumps(record))
    return tmp_path / "instances.json", folder


def test_coco_polygons_rle_crowds_and_overlaps(tmp_path, capsys):
    instances, images = coco_export(tmp_path)
    assert DataSeparate.main(["--dataset", "mine", "--coco", str(instances), "--images", str(images),
                              "--data-dir", str(tmp_path / "data"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "classes background, car, dog (background and the categories by id); 1 crowd region(s) ignored" in out
    info, _ = prepared(tmp_path)
    assert info["classes"] == ["background", "car", "dog"] and sum(info["counts"].values()) == 4
    first = np.array(Image.open(next((tmp_path / "data" / "mine").glob("*/masks/0-000000000000.png"))))
    assert first[12, 12] == 1 and first[4, 4] == 2 and first[0, 0] == 0   # the small car over the large dog
    crowd = np.array(Image.open(next((tmp_path / "data" / "mine").glob("*/masks/1-000000000001.png"))))
    assert set(np.unique(crowd).tolist()) == {0, 255}


@pytest.mark.parametrize("case,message", [
    ("file name climbs out", "leaves its folder (absolute, or through '..')"),
    ("absolute file name", "leaves its folder (absolute, or through '..')"),
    ("nan coordinate", "is not [x, y] of finite numbers"),
    ("rle of another size", "its RLE must have size [30, 40]"),
    ("rle counts lie", "its RLE counts add up to"),
    ("missing image", "image(s) it lists are not in --images"),
])
def test_hostile_coco_files_are_refused_naming_them(tmp_path, case, message):
    images_list = None
    annotations = []
    if case == "file name climbs out":
        images_list = [{"id": 0, "file_name": "../instances.json", "width": 4, "height": 4}]
    elif case == "absolute file name":
        images_list = [{"id": 0, "file_name": "/etc/hostname", "width": 4, "height": 4}]
    elif case == "nan coordinate":
        annotations = [{"id": 1, "image_id": 0, "category_id": 3, "segmentation": [[1, 1, float("nan"), 2, 3, 3]]}]
    elif case == "rle of another size":
        annotations = [{"id": 1, "image_id": 0, "category_id": 3, "segmentation": {"size": [5, 5], "counts": [25]}}]
    elif case == "rle counts lie":
        annotations = [{"id": 1, "image_id": 0, "category_id": 3,
                        "segmentation": {"size": [SIZE[1], SIZE[0]], "counts": [5, 5]}}]
    else:
        images_list = [{"id": 0, "file_name": "nowhere.jpg", "width": 4, "height": 4}]
    instances, images = coco_export(tmp_path, annotations=annotations, images=images_list)
    before = snapshot(tmp_path)
    status, err = run_script(DataSeparate.main, ["--dataset", "mine", "--coco", instances, "--images", images,
                                                 "--data-dir", tmp_path / "data", "--workers", "1"])
    assert status == 2 and message in err and "Traceback" not in err, err
    assert snapshot(tmp_path) == before


def cvat_export(folder: Path) -> Path:
    """CVAT's 'Segmentation mask 1.1' layout: labelmap.txt, SegmentationClass/ colour masks, JPEGImages/."""
    (folder / "SegmentationClass").mkdir(parents=True)
    (folder / "JPEGImages").mkdir()
    (folder / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\n"
                                         "road:128,64,128::\nsky:70,130,180::\nvoid:255,255,255::\n")
    for i in range(4):
        photo(i).save(folder / "JPEGImages" / f"f{i}.jpg")
        Image.fromarray(colour_mask(i)).save(folder / "SegmentationClass" / f"f{i}.png")
    return folder


def test_a_cvat_export_as_a_folder_or_its_zip(tmp_path):
    import zipfile

    folder = cvat_export(tmp_path / "export")
    assert run_script(DataSeparate.main, ["--dataset", "mine", "--cvat", folder, "--data-dir", tmp_path / "data",
                                          "--workers", "1"])[0] == 0
    assert prepared(tmp_path)[0]["classes"] == ["background", "road", "sky", "void"]
    with zipfile.ZipFile(tmp_path / "task.zip", "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    status, err = run_script(DataSeparate.main, ["--dataset", "zipped", "--cvat", tmp_path / "task.zip",
                                                 "--data-dir", tmp_path / "data", "--workers", "1"])
    assert status == 0, err
    info, masks = prepared(tmp_path, "zipped")
    assert info["counts"] == {"train": 3, "val": 1} and masks["train"][0][0, 0] == 3
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["mine", "zipped"]  # no drawing folder left
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("SegmentationClass/a.png", b"x")
        zf.writestr("../../escaped.txt", b"x")
    status, err = run_script(DataSeparate.main, ["--dataset", "evil", "--cvat", tmp_path / "evil.zip",
                                                 "--data-dir", tmp_path / "data", "--workers", "1"])
    assert status == 2 and "climbs out with '..'" in err and not (tmp_path.parent / "escaped.txt").exists(), err
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["mine", "zipped"]


@pytest.mark.parametrize("values,classes,ignored", [
    ((0, 85, 170, 255), ["class_0", "class_85", "class_170", "class_255"], False),  # grey-coded: 255 is a class
    ((0, 128, 255), ["class_0", "class_128", "class_255"], False),                  # a trimap
    ((0, 1, 2, 255), ["class_0", "class_1", "class_2"], True),                      # VOC-like: 255 the border
])
def test_which_value_is_ignore_and_which_are_classes(tmp_path, values, classes, ignored):
    images, masks = user_folders(tmp_path, values=values)
    assert separate(tmp_path, images, masks)[0] == 0
    info, prepared_masks = prepared(tmp_path)
    assert info["classes"] == classes
    assert (255 in np.unique(np.concatenate([m.ravel() for m in prepared_masks["train"]]))) == ignored


def test_grey_rgb_masks_hold_values_and_a_blank_frame_among_colour_masks_is_background(tmp_path):
    images, masks = user_folders(tmp_path, mask_array=lambda i: np.repeat(blob(seed=i)[..., None], 3, 2))  # R=G=B
    assert separate(tmp_path, images, masks)[0] == 0
    assert prepared(tmp_path)[0]["classes"] == ["background", "foreground"]
    images, masks = user_folders(tmp_path / "c", mask_array=lambda i: colour_mask(i) if i else
                                 np.zeros((SIZE[1], SIZE[0], 3), np.uint8))   # frame p0 not annotated: all black
    (tmp_path / "labelmap.txt").write_text("background:0,0,0::\nroad:128,64,128::\nsky:70,130,180::\nvoid:255,255,255::\n")
    assert separate(tmp_path / "c", images, masks, "--classes", tmp_path / "labelmap.txt")[0] == 0
    black = np.array(Image.open(next((tmp_path / "c" / "data" / "mine").glob("*/masks/p0.png"))))
    assert not black.any()


def test_repeated_entries_of_a_classes_file_are_refused(tmp_path):
    images, masks = user_folders(tmp_path, values=(0, 1))
    for text, message in (('{"classes": [{"name": "a", "value": 0}, {"name": "b", "value": 0}]}', "the value or colour 0"),
                          ('{"classes": [{"name": "a", "value": 0}, {"name": "a", "value": 1}]}', "the name a is given"),
                          ('{"classes": [{"name": "a", "value": 0}, {"name": "b", "value": 1}], "ignore": [1]}',
                           "the value or colour 1 is given twice")):
        (tmp_path / "c.json").write_text(text)
        status, err = separate(tmp_path, images, masks, "--classes", tmp_path / "c.json")
        assert status == 2 and message in err, err


def test_a_tiny_mask_is_no_scaled_mask(tmp_path):
    images, masks = user_folders(tmp_path, count=3)
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(masks / "p0.png")
    status, err = separate(tmp_path, images, masks, "--resize-masks")
    assert status == 2 and "p0.png 1x1 for p0.jpg 40x30" in err, err


def test_compressed_rle_and_short_counts(tmp_path):
    from pycocotools import mask as coco_mask

    region = np.zeros((SIZE[1], SIZE[0]), np.uint8, order="F")
    region[5:15, 8:30] = 1
    compressed = coco_mask.encode(np.asfortranarray(region))["counts"].decode()
    for counts, ok in ((compressed, True), ("", False), ("0", False), ("3", False)):
        annotations = [{"id": 1, "image_id": 0, "category_id": 3, "iscrowd": 0,
                        "segmentation": {"size": [SIZE[1], SIZE[0]], "counts": counts}}]
        instances, images = coco_export(tmp_path, annotations=annotations)
        status, err = run_script(DataSeparate.main, ["--dataset", "mine", "--coco", instances, "--images", images,
                                                     "--data-dir", tmp_path / "data", "--workers", "1", "--force"])
        if ok:
            assert status == 0, err
            mask = np.array(Image.open(next((tmp_path / "data" / "mine").glob("*/masks/0-000000000000.png"))))
            assert np.array_equal(mask, region.astype(np.uint8))   # car (class 1) exactly where encoded
        else:
            assert status == 2 and ("its RLE counts add up to" in err or "counts are damaged" in err), err


def test_hostile_shapes_ids_and_names(tmp_path):
    folder = labelme_folder(tmp_path, count=2)
    labelme_file(folder, "x", [("cat", "circle", [[10, 10], [10, 900000]])], image_path="p0.jpg")
    status, err = run_script(DataSeparate.main, ["--dataset", "mine", "--labelme", folder, "--data-dir", tmp_path / "d"])
    assert status == 2 and "a circle of radius 899990 around an image of 40x30" in err, err
    instances, images = coco_export(tmp_path, annotations=[{"id": 1, "image_id": [0], "category_id": 3,
                                                            "segmentation": [[1, 1, 5, 1, 5, 5]]}])
    status, err = run_script(DataSeparate.main, ["--dataset", "mine", "--coco", instances, "--images", images,
                                                 "--data-dir", tmp_path / "d"])
    assert status == 2 and "annotation 1 names no listed image_id and category_id" in err, err
    status, err = run_script(DataSeparate.main, ["--dataset", "/../../outside", "--labelme", folder,
                                                 "--data-dir", tmp_path / "d" / "data"])
    assert status == 2 and "--dataset" in err and not list(tmp_path.rglob("outside*")), err
    status, err = run_script(DataSeparate.main, ["--dataset", "mine", "--coco", instances, "--data-dir", tmp_path / "d"])
    assert status == 2 and "give --images with --masks (folders), --images with --coco" in err, err
