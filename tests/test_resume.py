"""Resuming from a checkpoint that does not fit the run, is damaged, or is hostile: each refused with a
message naming the entry, exit 2, nothing written (segmentnet.training.resume, checkpoint)."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import run_script, script_process, tiny_train_config, train_args

import TrainSegmentNet
from segmentnet.core.checkpoint import load_checkpoint, load_weights, save_checkpoint
from segmentnet.core.errors import DataError
from segmentnet.models import build_model
from segmentnet.training.engine import train


@pytest.fixture(scope="module")
def trained(tiny_voc, tmp_path_factory) -> Path:
    """last.pt of a one-epoch run on the tiny dataset."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(tiny_train_config(tiny_voc, run, batch_size=2))
    return run / "last.pt"


def edited_checkpoint(source: Path, dest: Path, **changes) -> Path:
    state = load_checkpoint(source)
    state.update(changes)
    save_checkpoint(state, dest)
    return dest


def test_resume_refuses_another_model_or_class_count(tmp_path, tiny_voc, trained):
    state = load_checkpoint(trained)
    five = {k: (v[:5] if k.startswith("head.") else v) for k, v in state["model"].items()}
    other = edited_checkpoint(trained, tmp_path / "other.pt", model_name="unet", num_classes=5, model=five,
                              classes=state["classes"][:5])  # (a consistent checkpoint of 5 classes)
    status, err = run_script(TrainSegmentNet.main, train_args(tiny_voc, tmp_path / "run", resume=other, epochs=2))
    assert status == 2, err
    assert "it is a 'unet' model, this run trains 'segmentnet'" in err
    assert "it has 5 classes, the dataset 'voc2012' has 21" in err
    assert not (tmp_path / "run").exists()


def test_resume_refuses_another_dataset_or_a_mid_epoch_batch_size_change(tmp_path, tiny_voc, trained):
    other = edited_checkpoint(trained, tmp_path / "other.pt", dataset="cityscapes", step_in_epoch=1)
    status, err = run_script(TrainSegmentNet.main,
                             train_args(tiny_voc, tmp_path / "run", resume=other, epochs=2, batch_size=4))
    assert status == 2, err
    assert "it was trained on 'cityscapes', this run uses 'voc2012'" in err
    assert "it stopped inside an epoch with batch_size 2, this run's is 4" in err


def test_resume_refuses_other_model_options(tmp_path, tiny_voc, trained):
    with pytest.raises(DataError, match="model_options"):
        train(tiny_train_config(tiny_voc, tmp_path / "run", batch_size=2, resume=str(trained), epochs=2,
                                model_options={"width": 4, "depth": 2, "blocks": 1}))
    assert not (tmp_path / "run").exists()
    args = train_args(tiny_voc, tmp_path / "run", resume=trained, epochs=2,
                      model_options={"width": 4, "depth": 2, "blocks": 1})
    status, err = run_script(TrainSegmentNet.main, [*args])
    assert status == 2 and "its model_options are {'width': 8, 'depth': 2, 'blocks': 1}" in err, err
    assert not (tmp_path / "run").exists()


def test_loading_weights_into_another_model_spells_out_the_mismatch(trained):
    weights = load_checkpoint(trained)["model"]
    with pytest.raises(DataError) as info:
        load_weights(build_model("segmentnet", 5, width=8, depth=2, blocks=1), weights, trained)
    assert "head.weight is (21, 8, 1, 1) in the checkpoint but (5, 8, 1, 1) in the model" in str(info.value)
    assert "head.bias is (21,) in the checkpoint but (5,) in the model" in str(info.value)
    with pytest.raises(DataError) as info:
        load_weights(build_model("segmentnet", 21, width=8, depth=3, blocks=1), weights, trained)
    assert "missing from the checkpoint: encoder.2." in str(info.value)
    assert "differ in shape" in str(info.value)  # the decoder of a deeper net takes other widths
    model = build_model("segmentnet", 21, width=8, depth=2, blocks=1)
    load_weights(model, {"module." + k: v for k, v in weights.items()}, trained)  # DDP's prefix is fine
    assert torch.equal(model.head.weight, weights["head.weight"])


class MakesAFile:
    """Unpickling this calls open(path, 'w'): the file appears if and only if the pickle's code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_malicious_checkpoint_is_refused_and_its_code_never_runs(tmp_path, tiny_voc):
    def payload(path: Path) -> Path:
        checkpoint = tmp_path / f"{path.stem}.pt"
        torch.save({"model": MakesAFile(path), "model_name": "segmentnet"}, checkpoint)
        return checkpoint

    # The payload is live: plain unpickling of the checkpoint's data.pkl runs it and the file appears.
    control = tmp_path / "control-was-run"
    with zipfile.ZipFile(payload(control)) as zf:
        pickle.loads(zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl"))))
    assert control.exists()

    target = tmp_path / "payload-was-run"
    evil = payload(target)
    with pytest.raises(DataError, match="was refused: it holds objects other than tensors"):
        load_checkpoint(evil)
    result = script_process("TrainSegmentNet.py", *train_args(tiny_voc, tmp_path / "run", resume=evil), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: checkpoint {evil} was refused")
    assert not target.exists(), "the checkpoint's code ran"
    assert not (tmp_path / "run").exists()


def test_truncated_checkpoint(tmp_path, tiny_voc, trained):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
    with pytest.raises(DataError, match="is truncated or corrupt"):
        load_checkpoint(cut)
    status, err = run_script(TrainSegmentNet.main, train_args(tiny_voc, tmp_path / "run", resume=cut))
    assert status == 2 and f"checkpoint {cut} is truncated or corrupt" in err and "last.pt or best.pt" in err, err


@pytest.mark.parametrize("changes,message", [
    (dict(model="weights"), "model must be a mapping of names to dense tensors of real numbers, got 'weights'"),
    (dict(model_options="width=8"), "model_options must be a JSON object (dict) of model options, got 'width=8'"),
    (dict(num_classes=21.0), "num_classes must be a whole number from 1 to 255, got 21.0"),
    (dict(rng={"torch": torch.zeros(10, dtype=torch.uint8), "cuda": []}), "rng must be random-generator states"),
    (dict(rng={"torch": torch.get_rng_state(), "cuda": "none"}), "rng must be random-generator states"),
    (dict(epoch=-1, step_in_epoch="2"), "epoch must be a whole number >= 0, got -1; step_in_epoch must be a whole "
                                        "number >= 0, got '2'"),
    (dict(scaler={"scale": "big"}), "scaler must be none or a gradient scaler's state, got {'scale': 'big'}"),
    (dict(optimizer=None), "optimizer is missing"),
    (dict(scheduler=None, epoch_losses=None), "scheduler is missing; epoch_losses is missing"),
])
def test_resume_from_a_checkpoint_of_the_wrong_structure(tmp_path, tiny_voc, trained, changes, message):
    state = load_checkpoint(trained)
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    bad = tmp_path / "bad.pt"
    save_checkpoint(state, bad)
    status, err = run_script(TrainSegmentNet.main, train_args(tiny_voc, tmp_path / "run", resume=bad, epochs=2))
    assert status == 2, err
    assert err.startswith(f"error: checkpoint {bad} is damaged or was not written by TrainSegmentNet.py: ") and \
        message in err, err
    assert "Use another copy (last.pt or best.pt) or start a new run" in err
    assert not (tmp_path / "run").exists()


def test_resume_from_a_checkpoint_whose_optimizer_state_does_not_fit(tmp_path, tiny_voc, trained):
    state = load_checkpoint(trained)
    first = next(iter(state["optimizer"]["state"]))
    state["optimizer"]["state"][first]["exp_avg"] = torch.zeros(3)
    save_checkpoint(state, tmp_path / "bad.pt")
    status, err = run_script(TrainSegmentNet.main,
                             train_args(tiny_voc, tmp_path / "run", resume=tmp_path / "bad.pt", epochs=2))
    assert status == 2 and "its optimizer state is damaged: exp_avg of a parameter of shape" in err, err
    assert not (tmp_path / "run").exists()


# The entries a training checkpoint of the previous release (before TrainState) holds: the format a
# resume reads, so a checkpoint written before the refactor still resumes.
PREVIOUS_RELEASE_ENTRIES = {"model", "run_id", "model_name", "model_options", "num_classes", "classes", "palette",
                            "mean", "std", "ignore_index", "dataset", "config", "optimizer", "scheduler", "scaler",
                            "epoch", "step_in_epoch", "best_miou", "best_epoch", "nonfinite_steps", "epoch_losses",
                            "rng"}
PREVIOUS_RELEASE_SCHEDULER = {"global_step", "total_steps", "warmup_steps", "planned_epochs", "elapsed_seconds",
                              "epoch_seconds"}


def test_a_checkpoint_keeps_the_previous_releases_entries(trained):
    state = load_checkpoint(trained)
    assert set(state) == PREVIOUS_RELEASE_ENTRIES
    assert set(state["scheduler"]) == PREVIOUS_RELEASE_SCHEDULER and set(state["rng"]) == {"torch", "cuda"}


def test_train_state_round_trips_through_its_checkpoint_entries(tmp_path):
    from segmentnet.training.state import TrainState

    state = TrainState(steps_per_epoch=6, grad_accum=4, epoch=3, step_in_epoch=2, global_step=20, best_miou=0.5,
                       best_epoch=2, nonfinite_steps=1, epoch_losses=[0.5, 0.25], elapsed_before=100.0,
                       epoch_seconds=7.5, warmup_steps=4)
    state.plan_epochs(9)
    entries = state.state_dict()
    assert entries["scheduler"]["total_steps"] == 18 and entries["scheduler"]["elapsed_seconds"] >= 100.0
    restored = TrainState(steps_per_epoch=6, grad_accum=4)
    restored.load_state_dict(entries, tmp_path / "last.pt")
    for key in ("epoch", "step_in_epoch", "global_step", "best_miou", "best_epoch", "nonfinite_steps",
                "epoch_losses", "epoch_seconds"):
        assert getattr(restored, key) == getattr(state, key), key
    assert restored.elapsed_before == entries["scheduler"]["elapsed_seconds"]
    older = TrainState(steps_per_epoch=6, grad_accum=4)  # a checkpoint from before the clock was kept
    older.load_state_dict({**entries, "scheduler": {k: v for k, v in entries["scheduler"].items()
                                                    if k not in ("elapsed_seconds", "epoch_seconds")}},
                          tmp_path / "last.pt")
    assert (older.elapsed_before, older.epoch_seconds) == (0.0, 0.0)
    with pytest.raises(DataError, match="stopped after batch 2 of an epoch, but an epoch of this run has 2 batches"):
        TrainState(steps_per_epoch=2, grad_accum=1).load_state_dict(entries, tmp_path / "last.pt")
