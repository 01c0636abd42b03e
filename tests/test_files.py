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


def test_a_writer_that_makes_the_file_anew_still_leaves_a_new_files_permissions(tmp_path):
    # safetensors replaces the temporary file by one readable by its owner only (0600): weights saved by
    # training were unreadable to anyone else whatever the umask
    from classsr_cli.models import create
    from classsr_cli.weights import save_model

    old_umask = os.umask(0o022)
    try:
        path = save_model(create("fsrcnn", widths=[4, 8]), tmp_path / "w.safetensors", "fsrcnn")
        with atomic_paths([tmp_path / "x.bin"]) as (temp,):
            temp.unlink()
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o644


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
