"""--auto true: the plan's rules on synthetic fingerprints (each changes its choice when its input
changes), the user's settings winning, plan.json written, printed, shown by Report and kept on resume."""
from __future__ import annotations

import contextlib
import io
import json
import re

import pytest
from conftest import run_script

import TrainSegmentNet
from segmentnet.core.cli import call_main
from segmentnet.planning import rules
from segmentnet.planning.rules import Choice, Plan, choice_rows


def fingerprint(short=360, long=480, classes=None, train_images=300, val_images=50):
    """A dataset fingerprint as measure_dataset writes it; classes: (pixel share, extent, width_px)."""
    classes = classes or [(0.6, 1.0, 200.0), (0.4, 0.6, 80.0)]
    return {"train_images": train_images, "val_images": val_images, "num_classes": len(classes),
            "short_side": {"min": short, "median": float(short), "max": short},
            "long_side": {"min": long, "median": float(long), "max": long}, "ignored_share": 0.0,
            "classes": [{"name": f"c{i}", "pixel_share": share, "image_share": 1.0, "extent": extent,
                         "width_px": width, "regions_per_image": 1.0}
                        for i, (share, extent, width) in enumerate(classes)]}


@pytest.mark.parametrize("short,crop", [(360, 256), (480, 320), (100, 128), (1024, 512)])
def test_crop_follows_the_image_size(short, crop):
    assert rules.crop_rule(fingerprint(short=short)).settings == {"crop_size": crop}


@pytest.mark.parametrize("smallest,low,high", [(0.1, 0.5, 1.5), (0.3, 0.5, 1.0), (0.6, 0.25, 1.0)])
def test_scale_range_follows_the_smallest_regions(smallest, low, high):
    fp = fingerprint(classes=[(0.7, 1.0, 200.0), (0.3, smallest, 20.0)])
    assert rules.scale_rule(fp).settings == {"scale_min": low, "scale_max": high}


def test_a_class_in_few_images_does_not_set_the_scale():
    fp = fingerprint(classes=[(0.7, 1.0, 200.0), (0.29, 0.8, 90.0), (0.01, 0.05, 3.0)])
    fp["classes"][2]["image_share"] = 0.01
    assert rules.scale_rule(fp).settings == {"scale_min": 0.25, "scale_max": 1.0}


@pytest.mark.parametrize("shares,weights", [([0.5, 0.3, 0.2], "none"), ([0.9, 0.09, 0.01], "enet")])
def test_class_weights_only_for_imbalanced_classes(shares, weights):
    fp = fingerprint(classes=[(s, 0.5, 50.0) for s in shares])
    assert rules.class_weight_rule(fp).settings == {"class_weights": weights}


@pytest.mark.parametrize("extra,step,loss", [(0.01, 1.0, "ce+lovasz"), (0.8, 0.6, "ce+jaccard")])
def test_lovasz_only_where_its_sorting_is_cheap(extra, step, loss):
    assert rules.loss_rule(extra, step).settings == {"loss": loss}


def test_the_ladder_goes_finer_for_thin_classes_and_deeper_for_large_crops():
    wide = rules.model_ladder(fingerprint(), crop=256)
    thin = rules.model_ladder(fingerprint(classes=[(0.9, 1.0, 200.0), (0.1, 0.3, 5.0)]), crop=256)
    assert [o["stem_stride"] for _, o in wide] == [4, 4, 4, 4]
    assert [o["width"] for _, o in wide] == [16, 32, 48, 64]
    assert [o["stem_stride"] for _, o in thin] == [4, 4, 2, 2]
    assert wide[1][1] == rules.REFERENCE
    # The coarsest cells (stem_stride * 2**depth) are at least a quarter of the crop.
    assert [o["depth"] for _, o in thin] == [4, 4, 5, 5]
    assert rules.model_ladder(fingerprint(), crop=320)[1][1]["depth"] == 5


@pytest.mark.parametrize("speeds,pick", [
    ([10, 10, 10, 10], 1),        # a larger network would see 36k images in the hour: the reference
    ([100, 60, 30, 15], 2),       # 108k with the third rung, 54k with the fourth (under the 80k target)
    ([100, 60, 30, 25], 3),       # 90k with the fourth
    ([1, 0.5, 0.2, 0.1], 0),      # the reference would see fewer than 10 epochs of 300 images
])
def test_model_size_follows_the_budget(speeds, pick):
    ladder = rules.model_ladder(fingerprint(), crop=256)
    asked = []

    def images_per_second(options):
        asked.append(options)
        return speeds[[o for _, o in ladder].index(options)]

    choice, index = rules.model_rule(ladder, images_per_second, 3600, train_images=300)
    assert index == pick
    assert choice.settings["model_options"] == ladder[index][1]
    # Measured bottom up, and no further than the first rung that falls short.
    assert asked[0] == ladder[1][1]
    assert all(speeds[[o for _, o in ladder].index(a)] * 3600 >= rules.TARGET_SAMPLES for a in asked[1:-1])


@pytest.mark.parametrize("speeds,amp,dtype", [({"float32": 10, "bfloat16": 19}, True, "bfloat16"),
                                              ({"float32": 10, "bfloat16": 5}, False, "auto"),
                                              ({"float32": 10, "float16": 10.5}, False, "auto")])
def test_half_precision_only_where_measured_faster(speeds, amp, dtype):
    assert rules.precision_rule(speeds, "cpu").settings == {"amp": amp, "amp_dtype": dtype}


def test_batch_follows_the_device_memory_and_the_dataset():
    assert rules.batch_rule("cpu", None, None, 8, 300).settings == {"batch_size": 8, "lr": rules.BASE_LR}
    big = rules.batch_rule("cuda", 80 * 2 ** 30, 16 * 2 ** 30, 8, 300).settings  # 2 GiB an image: 16 in 40 GiB
    small = rules.batch_rule("cuda", 80 * 2 ** 30, 8 * 20 * 2 ** 30, 8, 300).settings
    assert big["batch_size"] == 16 and small["batch_size"] == 8
    assert big["lr"] == pytest.approx(rules.BASE_LR * 2 ** 0.5, rel=1e-3)
    assert rules.batch_rule("cpu", None, None, 8, 12).settings["batch_size"] == 2  # at least 4 steps an epoch
    assert rules.batch_rule("cpu", None, None, 8, 3).settings["batch_size"] == 1
    assert rules.batch_rule("cpu", None, None, 8, 300, world_size=8).settings["batch_size"] == 8
    assert rules.batch_rule("cpu", None, None, 8, 100, world_size=8).settings["batch_size"] == 2  # 12 each
    # The lr follows the images of a step: a given batch, the processes, the accumulated micro-batches.
    assert rules.batch_rule("cpu", None, None, 8, 300, given_batch=32).settings == {
        "batch_size": 32, "lr": pytest.approx(2 * rules.BASE_LR)}
    assert rules.batch_rule("cpu", None, None, 8, 3000, world_size=2, grad_accum=2).settings["lr"] == \
        pytest.approx(2 * rules.BASE_LR)


def test_loader_workers_follow_the_cores_and_the_paces():
    assert rules.workers_rule("cpu", 2, 15, 60).settings == {"workers": 1}
    assert rules.workers_rule("cuda", 16, 600, 100).settings == {"workers": 6}
    assert rules.workers_rule("cuda", 4, 600, 100).settings == {"workers": 3}
    assert rules.workers_rule("cuda", 16, 600, 100, processes=8).settings == {"workers": 1}  # 2 cores each


def test_validation_cadence_follows_its_cost():
    # Epochs of 30 s in 3000 s: validation every few epochs at about 5 % of the time, at least 5 times
    # while that stays under 15 %; its time comes out of the epochs.
    cheap = rules.schedule_rule(360, 8, 12, val_seconds=2.5, run_seconds=3000).settings
    dear = rules.schedule_rule(360, 8, 12, val_seconds=30, run_seconds=3000).settings
    dearer = rules.schedule_rule(360, 8, 12, val_seconds=300, run_seconds=3000).settings
    assert cheap["val_every"] == 2
    assert dear["val_every"] == 19    # 20 at 5 % (4 validations in ~95 epochs); for 5 validations 19
    assert dearer["val_every"] == 67  # not 12 validations of 300 s: at most 15 % of the time
    assert cheap["warmup_epochs"] == pytest.approx(100 / 45, abs=0.01)
    assert cheap["epochs"] == 100_000  # the budget ends the run
    given = rules.schedule_rule(360, 8, 12, val_seconds=2.5, run_seconds=3000, max_epochs=24).settings
    assert given["epochs"] == 24 and given["val_every"] == 2
    assert rules.schedule_rule(360, 8, 12, val_seconds=30, run_seconds=3000, max_epochs=24).settings["val_every"] == 7


def test_a_crop_above_the_reference_only_where_the_budget_affords_it():
    context = rules.crop_rule(fingerprint(short=720))  # 512: 0.7 of the shorter side
    assert context.settings == {"crop_size": 512}
    per_second = rules.TARGET_SAMPLES / 3600  # the reference network's pace at crop 256

    def crop(seconds: float) -> int:
        return rules.crop_budget_rule(context, per_second, seconds).settings["crop_size"]

    # An area 4x the reference's costs 4x the time an image: 512 where the budget shows the target at it.
    assert crop(4 * 3600) == 512
    assert crop((290 / 256) ** 2 * 3600) == 288  # as much context as the budget affords (multiples of 32)
    assert crop(3600) == 256 == crop(600)  # never below the reference's crop
    assert "under the 80k target" in rules.crop_budget_rule(context, per_second, 600).reason
    small = rules.crop_rule(fingerprint(short=200))  # a context crop under the reference's: kept at any budget
    assert rules.crop_budget_rule(small, per_second, 60).settings == small.settings == {"crop_size": 128}


def test_crop_fits_the_smallest_image_when_padding_is_off():
    fp = fingerprint(short=360)
    fp["short_side"]["min"] = 200
    assert rules.crop_rule(fp, pad=False, scale_min=0.5).settings == {"crop_size": 96}
    assert rules.crop_rule(fp, pad=True, scale_min=0.5).settings == {"crop_size": 256}


def test_a_given_end_of_the_scale_range_keeps_a_range():
    fp = fingerprint(classes=[(0.7, 1.0, 200.0), (0.3, 0.1, 20.0)])  # the rule: 0.5 .. 1.5
    assert rules.scale_rule(fp, given_min=2.0).settings["scale_max"] == 2.0
    assert rules.scale_rule(fp, given_max=0.3).settings["scale_min"] == 0.3
    assert rules.scale_rule(fp, given_min=0.7).settings == {"scale_min": 0.5, "scale_max": 1.5}


def test_given_settings_win_and_are_marked():
    plan = Plan({})
    plan.add(Choice({"scale_min": 0.5, "scale_max": 1.5}, "rule"), {"scale_max": 2.0})
    plan.add(Choice({"crop_size": 256}, "rule"), {"crop_size": 96})
    assert plan.settings() == {"scale_min": 0.5, "scale_max": 2.0, "crop_size": 96}
    assert [c.by for c in plan.choices] == ["rule", "you"]
    assert "set by you (scale_max)" in plan.choices[0].reason


# ----------------------------------------------------------------------------- a whole auto run


def auto_args(data, out, *more) -> list[str]:
    return ["--dataset", "voc2012", "--data-dir", str(data), "--out", str(out), "--progress", "false",
            "--auto", "true", *more]


def test_auto_run_plans_what_is_not_given_and_keeps_what_is(tiny_voc, tmp_path):
    out = tmp_path / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = call_main(TrainSegmentNet.main, auto_args(tiny_voc, out, "--time-budget", "5", "--epochs", "1",
                                                            "--batch-size", "2", "--scale-min", "1.2", "--workers", "0"))
    assert status == 0
    plan = json.loads((out / "plan.json").read_text())
    config = json.loads((out / "config.json").read_text())
    fp = plan["fingerprint"]
    assert fp["train_images"] == 4 and plan["speeds"] and plan["machine"]["cores"] >= 1
    # Given: kept as they are; the rules around them adapt (the lr to the batch, scale_max to scale_min).
    assert (config["time_budget"], config["epochs"], config["batch_size"], config["workers"], config["scale_min"]) == \
        (5, 1, 2, 0, 1.2)
    assert config["lr"] == pytest.approx(rules.BASE_LR * (2 / 8) ** 0.5)
    assert config["scale_max"] >= 1.2
    # Not given: chosen by the rules from the fingerprint and the measurements, not the defaults.
    assert config["crop_size"] == rules.crop_rule(fp).settings["crop_size"] != TrainSegmentNet.Config.crop_size
    assert config["class_weights"] == rules.class_weight_rule(fp).settings["class_weights"]
    assert config["loss"] in ("ce+jaccard", "ce+lovasz") and config["colour_jitter"] == 0.3
    assert config["model_options"] in [o for _, o in rules.model_ladder(fp, config["crop_size"])]
    for key, value in plan["settings"].items():
        assert config[key] == value, key
    said = " ".join(c["reason"] for c in plan["choices"])
    for key in ("time_budget", "epochs", "batch_size", "scale_min", "workers"):
        assert re.search(rf"set by you \([^)]*\b{key}\b", said), key
    assert all(c["reason"] for c in plan["choices"])
    # The planning's seconds count in the budget's clock.
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["elapsed_seconds"] >= plan["planning_seconds"] > 0
    table = printed.getvalue()
    assert "plan (--auto true" in table and all(why in table for _, why in choice_rows(plan["choices"]))

    # Resumed: the plan's settings come from the checkpoint, nothing is measured again; the record grows.
    from segmentnet.planning import plan as planning

    def measured(*args, **kwargs):
        raise AssertionError("a resumed auto run measured again")

    resume = ["--resume", str(out / "last.pt"), "--auto", "true", "--data-dir", str(tiny_voc), "--progress", "false"]
    status, err = run_script(TrainSegmentNet.main, [a for a in resume if a not in ("--auto", "true")])
    assert status != 0 and "resume it with --auto true" in err
    with pytest.MonkeyPatch.context() as mp:
        for name in ("step_speed", "loss_seconds", "inference_seconds", "loader_speed", "measure_dataset"):
            mp.setattr(planning, name, measured)
        status, err = run_script(TrainSegmentNet.main, resume + ["--epochs", "2"])
        assert status == 0, err
        resumed = json.loads((out / "config.json").read_text())
        kept = ("crop_size", "scale_min", "scale_max", "lr", "model_options", "time_budget", "val_every", "loss",
                "batch_size", "workers")
        assert {k: resumed[k] for k in kept} == {k: config[k] for k in kept} and resumed["epochs"] == 2
        again = json.loads((out / "plan.json").read_text())
        assert again["fingerprint"] == fp and again["choices"][:-1] == plan["choices"]
        assert "resumed from" in again["choices"][-1]["reason"]

        from segmentnet.results.report import load_run
        rows = load_run(out)["plan"]
        assert len(rows) == len(plan["choices"]) + 1 and "resumed from" in rows[-1][1]

        # A damaged record: the run resumes with its checkpoint's settings, and says what was lost.
        (out / "plan.json").write_text('{"choices": [{"settings": {"lr": "x"}}], "fingerprint": 3')
        status, err = run_script(TrainSegmentNet.main, resume + ["--epochs", "3"])
        assert status == 0, err
        assert "plan.json cannot be read" in err
        assert json.loads((out / "config.json").read_text())["lr"] == config["lr"]


def test_the_plan_probes_at_the_reference_crop_and_widens_it_for_a_longer_budget(tiny_voc, monkeypatch):
    from segmentnet.core.distributed import DistEnv
    from segmentnet.planning import plan as planning

    # Images of 720 px on the shorter side (a context crop of 512), a pace that falls with the crop's area.
    monkeypatch.setattr(planning, "measure_dataset", lambda root, info: fingerprint(short=720, long=960))
    monkeypatch.setattr(planning, "step_speed", lambda model, options, classes, crop, *a, **k: {
        "images_per_second": 40.0 * (256 / crop) ** 2, "peak_memory_bytes": None})
    monkeypatch.setattr(planning, "loss_seconds", lambda *a, **k: 0.01)
    monkeypatch.setattr(planning, "inference_seconds", lambda *a, **k: 0.05)
    monkeypatch.setattr(planning, "loader_speed", lambda dataset: 1000.0)

    def plan_for(minutes: float):
        cfg = TrainSegmentNet.Config(dataset="voc2012", data_dir=str(tiny_voc), auto=True, time_budget=minutes)
        return planning.make_plan(cfg, {"time_budget": minutes}, DistEnv())

    short, long = plan_for(15), plan_for(600)  # ~34k images at crop 256 in 15 minutes; ~1.4M in 10 hours
    probes = [s for s in short.speeds if "precision" in s]
    assert {s["crop"] for s in probes} == {256}  # measured at the reference's crop, not the context's 512
    assert short.settings()["crop_size"] == 256 and "under the 80k target" in " ".join(c.reason for c in short.choices)
    assert long.settings()["crop_size"] == 512
    assert [s["crop"] for s in long.speeds if "precision" in s][-1] == 512  # the chosen crop's networks measured
    assert long.settings()["model_options"] in [o for _, o in rules.model_ladder(long.fingerprint, 512)]
    assert short.settings()["model_options"]["depth"] == 4 and long.settings()["model_options"]["depth"] == 5


def test_a_plan_that_cannot_work_is_refused_before_training(tiny_voc, tmp_path, monkeypatch):
    from segmentnet.planning import plan as planning

    status, err = run_script(TrainSegmentNet.main, auto_args(tiny_voc, tmp_path / "a", "--time-budget", "0"))
    assert status != 0 and "time budget" in err and not (tmp_path / "a").exists()
    # A network that does not fit the device (out of memory at every precision) is named.
    monkeypatch.setattr(planning, "step_speed", lambda *a, **k: {"images_per_second": 0.0, "peak_memory_bytes": None,
                                                                 "out_of_memory": True})
    status, err = run_script(TrainSegmentNet.main, auto_args(tiny_voc, tmp_path / "b"))
    assert status != 0 and "does not fit this device" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_a_damaged_plan_json_is_named_by_report(tmp_path):
    from segmentnet.core.errors import DataError
    from segmentnet.results.report import read_plan

    (tmp_path / "plan.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not a training plan"):
        read_plan(tmp_path / "plan.json")
    (tmp_path / "plan.json").write_text("{")
    with pytest.raises(DataError, match="cannot be read as JSON"):
        read_plan(tmp_path / "plan.json")
    assert read_plan(tmp_path / "absent.json") == []
    # Entries not of a choice's shape are left out; long or multi-line text is bounded to one line.
    (tmp_path / "plan.json").write_text(json.dumps({"choices": [
        {"settings": {"lr": 0.1}, "reason": "a\nb | c" * 1000}, {"settings": 3, "reason": "x"}, "junk"]}))
    rows = read_plan(tmp_path / "plan.json")
    assert len(rows) == 1 and rows[0][0] == "lr 0.1" and "\n" not in rows[0][1] and len(rows[0][1]) <= rules.MAX_CELL
