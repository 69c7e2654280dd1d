"""An output path robometa cannot write is one error line naming it, never a traceback."""

from __future__ import annotations

from pathlib import Path

from robometa.cli import main


def test_an_out_dir_under_a_regular_file_is_one_error_line(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["quickstart", "--out", str(blocker / "qs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"robometa quickstart: error: {blocker / 'qs'}: Not a directory")
    assert len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "not a directory"
