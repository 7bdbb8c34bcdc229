"""atomic: temporary file next to the target, umask permissions, rename on success, cleanup on failure."""
import os
import stat
import sys

import pytest

from stemsplit.atomic import atomic_path, commit, commit_all, discard, temp_path_for


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back afterwards."""
    previous = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(previous)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_success_renames_into_place_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as temp:
        assert temp != target and temp.is_file()
        temp.write_text("new")
        assert not target.exists()  # nothing under the final name until the block succeeded
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_success_replaces_an_existing_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as temp:
        temp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_an_exception_leaves_neither_a_final_file_nor_a_temporary_one(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(ValueError, match="boom"):
        with atomic_path(target) as temp:
            temp.write_text("half")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_an_exception_leaves_an_existing_final_file_untouched(tmp_path, error):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(error):
        with atomic_path(target) as temp:
            temp.write_text("half")
            raise error()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_failed_rename_removes_the_temporary_file(tmp_path):
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a non-empty folder cannot be replaced by a file
    with pytest.raises(OSError):
        with atomic_path(target) as temp:
            temp.write_text("data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert [p.name for p in target.iterdir()] == ["inside"]


def _group(folder, names):
    """Finished temporaries with new contents for `names` in `folder`, as (temp, final) pairs."""
    pairs = []
    for name in names:
        temp = temp_path_for(folder / name)
        temp.write_text(f"new {name}")
        pairs.append((temp, folder / name))
    return pairs


def test_commit_all_places_every_file_and_replaces_older_ones(tmp_path):
    (tmp_path / "b.txt").write_text("old b")
    commit_all(_group(tmp_path, ["a.txt", "b.txt", "c.txt"]))
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "a.txt": "new a.txt", "b.txt": "new b.txt", "c.txt": "new c.txt"}


# 2 older files, 3 new ones: renames 1-2 move the older files aside, 3-5 place the new ones
@pytest.mark.parametrize("failing", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_commit_all_is_all_or_nothing(tmp_path, monkeypatch, failing, error):
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "c.txt").write_text("old c")
    pairs = _group(tmp_path, ["a.txt", "b.txt", "c.txt"])
    calls = {"n": 0}
    replace = os.replace

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == failing:
            raise error()
        replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(error):
        commit_all(pairs)
    monkeypatch.undo()
    # the older files are back, nothing new is in place, and no temporary file is left
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.txt": "old a", "c.txt": "old c"}


def test_commit_all_names_the_final_path_that_failed(tmp_path):
    (tmp_path / "b.txt" / "inside").mkdir(parents=True)  # a non-empty folder cannot be replaced by a file
    with pytest.raises(OSError) as caught:
        commit_all(_group(tmp_path, ["a.txt", "b.txt"]))
    assert caught.value.filename == str(tmp_path / "b.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
@pytest.mark.parametrize("value, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_permissions_follow_the_umask(tmp_path, umask, value, expected):
    umask(value)
    target = tmp_path / "out.bin"
    with atomic_path(target) as temp:
        temp.write_bytes(b"x")
    assert mode(target) == expected


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_commit_all_gives_umask_permissions(tmp_path, umask):
    umask(0o022)
    commit_all(_group(tmp_path, ["a.txt", "b.txt"]))
    assert [mode(p) for p in sorted(tmp_path.iterdir())] == [0o644, 0o644]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_permissions_follow_the_umask_even_when_the_writer_recreates_the_file(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "out.bin"
    with atomic_path(target) as temp:
        temp.unlink()  # like safetensors: a fresh private file in place of the one given
        fd = os.open(temp, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    assert mode(target) == 0o644


def test_temporary_files_are_hidden_unique_and_next_to_the_target(tmp_path):
    target = tmp_path / "deeper" / "stem.wav"
    first, second = temp_path_for(target), temp_path_for(target)
    assert first != second
    for temp in (first, second):
        assert temp.parent == target.parent  # same folder: the rename stays on one file system
        assert temp.name.startswith(".stem.wav.")
        assert temp.is_file() and temp.stat().st_size == 0
    discard(first)
    discard(first)  # already gone: nothing to do
    commit(second, target)
    assert [p.name for p in target.parent.iterdir()] == ["stem.wav"]
