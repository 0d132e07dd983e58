"""Atomic result files."""

import os

from econlm.runinfo import write_json


def test_atomic_writes_leave_normal_permissions_and_no_temporary_files(tmp_path):
    target = tmp_path / "out" / "result.json"
    write_json(target, {"b": float("nan"), "a": 1})
    assert target.read_text() == '{\n  "a": 1,\n  "b": null\n}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]
