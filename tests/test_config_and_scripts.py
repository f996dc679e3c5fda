"""Hyperparameters from flags and JSON, --help, and scripts that import without side effects."""
from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, run_script, script_process

import DataExtract
import DataSeparate
from segmentnet.core.config import parse_config
from segmentnet.core.errors import ConfigError
from segmentnet.datasets import DATASETS
from TrainSegmentNet import Config

SCRIPTS = ["DataExtract", "DataSeparate", "DatasetCreate", "SegmentNet", "TrainSegmentNet"]


def test_flags_with_dashes_or_underscores_and_typed_values():
    cfg = parse_config(Config, ["--batch-size", "3", "--crop_size", "65", "--lr", "0.5", "--amp", "false",
                                "--model-options", '{"width": 16}'])
    assert (cfg.batch_size, cfg.crop_size, cfg.lr, cfg.amp, cfg.model_options) == (3, 65, 0.5, False, {"width": 16})
    assert cfg.epochs == Config().epochs


def test_json_config_then_flags_override(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"epochs": 7, "batch-size": 2, "lr": 1}))
    cfg = parse_config(Config, ["--config", str(path), "--batch-size", "5"])
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == (7, 5, 1.0)
    path.write_text(json.dumps({"epohcs": 7}))
    with pytest.raises(ConfigError, match="unknown hyperparameter.*epohcs"):
        parse_config(Config, ["--config", str(path)])


@pytest.mark.parametrize("values,message", [
    ({"epochs": True}, "epochs must be int, got True"),       # JSON true is not the number 1
    ({"resume_older": 1}, "resume_older must be bool, got 1"),
])
def test_json_config_values_of_the_wrong_type(tmp_path, values, message):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ConfigError, match=message):
        parse_config(Config, ["--config", str(path)])


@pytest.mark.parametrize("case,message", [
    ("a folder", "is a folder; give the JSON file of hyperparameters"),
    ("not UTF-8", "is not text (UTF-8): 'utf-8' codec can't decode byte 0xff"),
    ("a fifo", "is a special file (a fifo, a device"),
])
def test_a_config_file_that_is_no_text_file(tmp_path, no_hang, case, message):
    path = tmp_path / "run.json"
    if case == "a folder":
        path.mkdir()
    elif case == "not UTF-8":
        path.write_bytes(b'{"epochs": 2, "out": "\xff\xfe"}')
    else:
        os.mkfifo(path)
    with no_hang(), pytest.raises(ConfigError, match=re.escape(f"--config {path} {message}")):
        parse_config(Config, ["--config", str(path)])


def test_help_lists_every_hyperparameter_with_its_comment_and_default():
    out = subprocess.run([sys.executable, "TrainSegmentNet.py", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    out = " ".join(out.split())  # argparse wraps lines
    assert "--batch-size" in out and "--batch_size" in out
    assert "peak learning rate" in out and "(default: 0.001)" in out
    for name in Config.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in out, name


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_import_without_side_effects(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sys.modules.pop(name, None)
    module = importlib.import_module(name)
    assert callable(getattr(module, "main", None)) or name == "SegmentNet"
    assert os.listdir(tmp_path) == []


def test_call_main_tells_a_users_error_from_a_bug(capsys):
    from segmentnet.core.cli import BUG_EXIT, call_main
    from segmentnet.core.errors import DataError, UnknownNameError

    def users_error(argv):
        raise DataError("x.png: the mask cannot be decoded; replace it")

    assert call_main(users_error) == 2
    err = capsys.readouterr().err
    assert err == "error: x.png: the mask cannot be decoded; replace it\n"

    def unknown_name(argv):
        raise UnknownNameError("unknown loss 'dice'; choices: ce, jaccard")

    assert call_main(unknown_name) == 2
    assert capsys.readouterr().err == "error: unknown loss 'dice'; choices: ce, jaccard\n"  # not quoted as KeyError

    def bug(argv):
        return {}["optimizer"]  # a KeyError from the code itself is no user's error

    assert call_main(bug) == BUG_EXIT == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'optimizer'" in err and "This is a bug in SegmentNet" in err
    assert not err.startswith("error:")


def test_unknown_dataset_lists_the_choices(tmp_path):
    for main in (DataExtract.main, DataSeparate.main):
        status, err = run_script(main, ["--dataset", "vocc", "--data-dir", tmp_path / "data"])
        assert status == 2 and err.strip() == f"error: unknown dataset 'vocc'; choices: {', '.join(sorted(DATASETS))}", err
    assert not (tmp_path / "data").exists()
    # and the script as a process of its own exits with 2
    result = script_process("DataSeparate.py", "--dataset", "mnist", "--data-dir", tmp_path, cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown dataset 'mnist'; choices:" in result.stderr and "voc2012" in result.stderr


@pytest.mark.parametrize("text,message", [
    ('{"val_every": ' + "[" * 200_000 + "]" * 200_000 + "}", "nested deeper than 64 levels"),
    ('{"time_budget": ' + "9" * 401 + "}", "an integer of 401 digits"),
    ('{"epochs": ' + "9" * 39 + "}", "epochs is an integer of 39 digits, beyond what any setting can be"),
])
def test_a_config_file_too_deep_or_with_a_huge_number_is_named(tmp_path, text, message):
    path = tmp_path / "run.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(Config, ["--config", str(path)])
    result = script_process("TrainSegmentNet.py", "--config", path, "--out", tmp_path / "run", cwd=ROOT)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_model_options_nested_too_deeply_are_a_usage_error(tmp_path):
    result = script_process("TrainSegmentNet.py", "--model-options", "[" * 50_000 + "]" * 50_000,
                            "--out", tmp_path / "run", cwd=ROOT)
    assert result.returncode == 2 and "nested deeper than 64 levels" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_stopping_cleanly_on_signals_leaves_an_ignored_signal_ignored():
    import signal

    from segmentnet.core.cli import stop_cleanly_on_signals

    before = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM)}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts a tool
    try:
        with stop_cleanly_on_signals("then"):
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, before[signal.SIGTERM])
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
    finally:
        signal.signal(signal.SIGHUP, before[signal.SIGHUP])
