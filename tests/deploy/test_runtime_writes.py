"""Writing state and results: a full or unwritable disk is a one-line error naming the path,
no partial file is left, and temporary files of killed writers are cleaned up.

Tests run as root, where ``chmod`` does not stop a write: the unwritable paths here are a path
under a regular file (``NotADirectoryError`` for anyone) and a monkeypatched disk-full error.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from robometa.deploy import Adapter
from robometa.deploy.cli import main
from robometa.deploy.loop import RoundResult
from robometa.deploy.runtime import (
    WriteError,
    atomic_write,
    check_writable,
    remove_stale_temp_files,
)

Z = np.zeros(4, np.float32)


def adapted(built) -> Adapter:
    adapter = Adapter.load(built.path, tolerance=float("inf"))
    rng = np.random.default_rng(0)
    for i in range(30):
        obs = (rng.normal(size=4) * 0.1).astype(np.float32)
        assert adapter.observe(obs, i % 3, 1.0, obs * 0.9, False)
    assert adapter.adapt(2).accepted
    return adapter


def disk_full(monkeypatch: pytest.MonkeyPatch, after_bytes: int = 100) -> None:
    """``np.savez`` writes ``after_bytes`` and then the disk is full."""

    def savez(f, **arrays):
        f.write(b"PK\x03\x04" + b"\0" * after_bytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", savez)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


class TestWriteFailures:
    def test_disk_full_names_the_path_and_keeps_the_previous_state(
        self, cavia, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        adapter = adapted(cavia)
        path = adapter.save_state(tmp_path / "state.npz")
        previous = path.read_bytes()
        disk_full(monkeypatch)
        with pytest.raises(WriteError) as caught:
            adapter.save_state(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: cannot write (No space left on device)")
        assert "\n" not in message and ".tmp" not in message
        assert isinstance(caught.value, OSError)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]  # no partial file
        assert path.read_bytes() == previous

    def test_a_path_under_a_regular_file_is_a_write_error(self, cavia, tmp_path: Path) -> None:
        (tmp_path / "file").write_text("not a directory")
        target = tmp_path / "file" / "state.npz"
        with pytest.raises(WriteError, match=rf"^{target}: cannot write \(Not a directory\)"):
            adapted(cavia).save_state(target)
        with pytest.raises(WriteError, match=rf"^{target}: cannot write \(Not a directory\)"):
            check_writable(target)
        with pytest.raises(WriteError, match="is a directory"):
            check_writable(tmp_path)

    def test_a_missing_directory_is_a_write_error(self, cavia, tmp_path: Path) -> None:
        target = tmp_path / "missing" / "state.npz"
        with pytest.raises(WriteError, match=rf"^{target}: cannot write \(No such file"):
            adapted(cavia).save_state(target)

    def test_check_writable_leaves_nothing_behind(self, tmp_path: Path) -> None:
        assert check_writable(tmp_path / "out.json") == tmp_path / "out.json"
        assert list(tmp_path.iterdir()) == []

    def test_an_interrupt_during_the_write_leaves_no_temporary_file(self, tmp_path: Path) -> None:
        def interrupted(f) -> None:
            f.write(b"half")
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            atomic_write(tmp_path / "out.json", interrupted)
        assert list(tmp_path.iterdir()) == []


class TestStaleTemporaryFiles:
    def test_save_and_load_remove_only_robometa_temp_files_of_dead_writers(
        self, cavia, tmp_path: Path
    ) -> None:
        adapter = adapted(cavia)
        path = adapter.save_state(tmp_path / "state.npz")
        gone = dead_pid()
        stale = [tmp_path / f".state.npz.robometa-tmp-{gone}-{i:016x}.tmp" for i in range(3)]
        kept = [
            tmp_path / f".state.npz.robometa-tmp-1-{0:016x}.tmp",  # pid 1 runs: may be writing
            tmp_path / f".state.npz.robometa-tmp-{os.getpid()}-{0:016x}.tmp",  # this process
            tmp_path / f".other.npz.robometa-tmp-{gone}-{0:016x}.tmp",  # another target's
            tmp_path / ".state.npz.abcd1234.tmp",  # not a name robometa gives
            tmp_path / f".state.npz.robometa-tmp-{gone}-notours.tmp",
            tmp_path / "notes.txt",
        ]
        for p in stale + kept:
            p.write_bytes(b"x" * 1000)
        adapter.save_state(path)
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in kept)
        stale[0].write_bytes(b"x")
        Adapter.load(cavia.path).load_state(path)
        assert not stale[0].exists() and all(p.exists() for p in kept)
        assert remove_stale_temp_files(path) == []

    def test_loading_from_a_directory_that_cannot_be_cleaned_still_works(
        self, cavia, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        adapter = adapted(cavia)
        path = adapter.save_state(tmp_path / "state.npz")
        (tmp_path / f".state.npz.robometa-tmp-{dead_pid()}-{0:016x}.tmp").write_bytes(b"x")

        def read_only(p):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr(os, "unlink", read_only)
        fresh = Adapter.load(cavia.path)
        fresh.load_state(path)
        np.testing.assert_array_equal(fresh.params["context"], adapter.params["context"])

    def test_writers_killed_mid_save_leave_nothing_after_the_next_save(
        self, cavia, tmp_path: Path
    ) -> None:
        """SIGKILL a process while it writes a 4 MB state, three times: the state file stays
        loadable throughout and the next ``save_state`` removes every temporary file."""
        n = 50_000
        adapter = adapted(cavia)
        path = adapter.save_state(tmp_path / "state.npz")
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        rng = np.random.default_rng(1)
        obs = (rng.normal(size=(n, 4)) * 0.1).astype(np.float32)
        arrays.update(
            {
                "buffer:obs": obs,
                "buffer:next_obs": obs * 0.9,
                "buffer:action": rng.integers(3, size=n),
                "buffer:reward": np.ones(n, np.float32),
                "buffer:terminated": np.zeros(n, np.float32),
            }
        )
        np.savez(path, **arrays)
        script = textwrap.dedent(
            f"""
            from robometa.deploy import Adapter
            adapter = Adapter.load({str(cavia.path)!r}, capacity={n})
            adapter.load_state({str(path)!r})
            print("ready", flush=True)
            while True:
                adapter.save_state({str(path)!r})
            """
        )
        killed_mid_write = 0
        for _ in range(10):
            child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not temp_files(tmp_path):
                pass
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            killed_mid_write += bool(temp_files(tmp_path))
            if killed_mid_write == 3:
                break
        assert killed_mid_write == 3, "the writer was never killed mid-write"
        restored = Adapter.load(cavia.path, capacity=n)
        restored.load_state(path)  # never corrupted, and it cleans up
        assert len(restored.buffer) == n
        assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]


def temp_files(directory: Path) -> list[Path]:
    """Files next to state.npz that a writer of it created (any naming)."""
    return [p for p in directory.iterdir() if p.name.startswith(".state.npz.")]


class TestCommandLineOutputs:
    @pytest.fixture
    def fake_rounds(self, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        """``run_rounds`` replaced by one round 0 result; records that it ran."""
        import robometa.deploy.cli as cli

        ran: list[str] = []

        def run_rounds(adapter, env, **kwargs):
            ran.append("ran")
            return [RoundResult(0, 0, 0, None, 12.0, acting_round=0)]

        monkeypatch.setattr(cli, "run_rounds", run_rounds)
        return ran

    def args(self, cavia, *extra: str) -> list[str]:
        return ["adapt", "--bundle", str(cavia.path), "--sample-test-task", "3", *extra]

    def test_an_unwritable_state_path_fails_before_adapting(
        self, cavia, tmp_path: Path, fake_rounds, capsys: pytest.CaptureFixture[str]
    ) -> None:
        (tmp_path / "file").write_text("")
        state = tmp_path / "file" / "state.npz"
        assert main(self.args(cavia, "--save-state", str(state))) == 2
        err = capsys.readouterr().err
        assert err == f"robometa-deploy: error: {state}: cannot write (Not a directory)\n"
        assert fake_rounds == []  # nothing was adapted first

    def test_the_json_is_written_when_saving_the_state_fails(
        self,
        cavia,
        tmp_path: Path,
        fake_rounds,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        state, report = tmp_path / "state.npz", tmp_path / "rounds.json"
        disk_full(monkeypatch)  # the state's write fails; the JSON's does not use np.savez
        assert main(self.args(cavia, "--save-state", str(state), "--json", str(report))) == 2
        captured = capsys.readouterr()
        error = (
            f"{state}: cannot write (No space left on device); any previous file there is unchanged"
        )
        assert captured.err == f"robometa-deploy: error: {error}\n"
        doc = json.loads(report.read_text())
        assert doc["rounds"][0]["greedy_return"] == 12.0
        assert doc["state"] == {"path": str(state), "saved": False, "error": error}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["rounds.json"]
        assert fake_rounds == ["ran"]

    def test_a_failing_json_write_still_saves_the_state(
        self,
        cavia,
        tmp_path: Path,
        fake_rounds,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        state, report = tmp_path / "state.npz", tmp_path / "rounds.json"
        replace = os.replace

        def full_for_json(src, dst):
            if Path(dst) == report:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            replace(src, dst)

        monkeypatch.setattr(os, "replace", full_for_json)
        assert main(self.args(cavia, "--save-state", str(state), "--json", str(report))) == 2
        assert f"{report}: cannot write (No space left on device)" in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]
        Adapter.load(cavia.path).load_state(state)
