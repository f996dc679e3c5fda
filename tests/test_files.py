"""The shared file-safety mechanism: plain names, staying inside a folder, atomic writes, ownership."""
from __future__ import annotations

import os

import pytest

from segmentnet.errors import DataError
from segmentnet.files import OWNER_FILE, atomic_path, check_inside, child, claim_folder, owner_of, plain_name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "/etc/passwd", "a\\b", "a\x00b", "x" * 256])
def test_plain_name_refuses_anything_but_one_component(name):
    with pytest.raises(DataError, match="train.txt line 3"):
        plain_name(name, "train.txt line 3")


@pytest.mark.parametrize("name", ["2007_000032", "a b", "..x", "x..", "é", "-n"])
def test_plain_name_accepts_ordinary_names(name):
    assert plain_name(name, "here") == name


def test_child_refuses_a_path_through_a_link_out(tmp_path):
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir(), outside.mkdir()
    (inside / "up").symlink_to(outside)
    (inside / "file.jpg").symlink_to(outside / "victim.jpg")
    with pytest.raises(DataError, match="outside"):
        child(inside, "file", "list", ".jpg")
    with pytest.raises(DataError, match="outside"):
        check_inside(inside, inside / "up" / "x", "list")
    assert child(inside, "ok", "list", ".jpg") == inside / "ok.jpg"


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_claim_folder_takes_new_empty_or_own_folders_only(tmp_path):
    new = claim_folder(tmp_path / "new", "Predict")
    assert owner_of(new)["tool"] == "Predict"
    assert claim_folder(new, "Predict") == new            # its own: accepted again
    with pytest.raises(DataError, match="written by Predict, not Report"):
        claim_folder(new, "Report")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert claim_folder(empty, "Predict") == empty
    users = tmp_path / "users"
    users.mkdir()
    (users / "photo.jpg").write_bytes(b"mine")
    with pytest.raises(DataError, match="did not write"):
        claim_folder(users, "Predict")
    assert sorted(os.listdir(users)) == ["photo.jpg"]       # nothing added
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="existing file"):
        claim_folder(tmp_path / "afile", "Predict")
    (users / OWNER_FILE).write_text("{not json")
    with pytest.raises(DataError, match="did not write"):  # a corrupt record is no ownership
        claim_folder(users, "Predict")
