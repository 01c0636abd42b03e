"""The one atomic writer: complete files or none, with a new file's permissions."""

import os
import stat

import pytest

from classsr_cli.files import atomic_open, atomic_paths, write_json


def test_a_finished_file_replaces_the_old_with_a_new_files_permissions(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    old_umask = os.umask(0o027)
    try:
        write_json(target, {"a": 1})
    finally:
        os.umask(old_umask)
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_open(target) as handle:
        handle.write(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_several_files_appear_together_or_not_at_all(tmp_path):
    targets = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(RuntimeError), atomic_paths(targets) as temps:
        temps[0].write_text("a")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    with atomic_paths(targets) as temps:
        for temp, text in zip(temps, "ab", strict=True):
            temp.write_text(text)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(t.name for t in temps)
    assert [t.read_text() for t in targets] == ["a", "b"]
