"""benchmarks/adaptation.py --backend ray: the same runs, logs and JSON as the local pool, the
same reuse of finished runs, failures named, a killed worker's run re-run, and one clear line
when Ray or the cluster is missing."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "adaptation.py"
ROOT = SCRIPT.parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("adaptation_bench_ray", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _args(out: Path, runs: Path, *more: str) -> list[str]:
    # The tiniest plan that still trains a meta-learner and the oracle the scores divide by
    # (no dr: its fine-tuning rate search alone takes 13 s).
    return [
        "--out", str(out), "--families", "cartpole", "--methods", "oracle,cavia",
        "--seeds", "0", "--steps", "400", "--oracle-steps", "400", "--n-tasks", "1",
        "--episodes", "1", "--runs-dir", str(runs), "--jobs", "2", *more,
    ]  # fmt: skip


def _without(text: str, *prefixes: Path) -> str:
    for prefix in prefixes:
        text = text.replace(str(prefix), "RUNS")
    return text


@pytest.mark.slow
def test_ray_backend_matches_the_local_pool_and_reuses_finished_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ray = pytest.importorskip("ray")
    import torch

    bench = _bench()
    local_runs, ray_runs = tmp_path / "local", tmp_path / "ray"
    assert bench.main(_args(tmp_path / "local.json", local_runs)) == 0
    capsys.readouterr()
    assert not ray.is_initialized()
    assert bench.main(_args(tmp_path / "ray.json", ray_runs, "--backend", "ray")) == 0
    assert not ray.is_initialized()  # the Ray it started is stopped again
    captured = capsys.readouterr()
    assert captured.out.count("[trained]") + captured.err.count("[trained]") == 2
    assert "[evaluated] cartpole in " in captured.out and "(0 left)" in captured.out
    assert "| cavia | ood |" in captured.out  # the table, printed by this process

    local = json.loads((tmp_path / "local.json").read_text())
    remote = json.loads((tmp_path / "ray.json").read_text())
    assert remote.keys() == local.keys()
    assert remote["families"].keys() == local["families"].keys() == {"cartpole"}
    lf, rf = local["families"]["cartpole"], remote["families"]["cartpole"]
    assert rf.keys() == lf.keys()
    # Seeded training repeats exactly on one machine (same thread count: the configs' 1), and
    # so does evaluation: every number is compared exactly (as text, where NaN == NaN).
    for key in ("summary", "fine_tune", "claim", "runs", "report_dir", "env_id"):
        assert _without(json.dumps(rf[key]), ray_runs) == _without(
            json.dumps(lf[key]), local_runs
        ), key
    # The per-run returns behind the summary, and the policies themselves.
    results = [
        json.loads((d / "cartpole" / "eval" / "results.json").read_text())
        for d in (local_runs, ray_runs)
    ]
    assert results[0]["returns"] == results[1]["returns"]
    assert results[0]["oracle_returns"] == results[1]["oracle_returns"]
    for name in ("oracle-seed0", "cavia-seed0"):
        a, b = (
            torch.load(d / "cartpole" / name / "policy.pt", weights_only=False)
            for d in (local_runs, ray_runs)
        )
        assert a["params"].keys() == b["params"].keys()
        assert all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])
        assert "CartPole" in Path(f"{ray_runs / 'cartpole' / name}.log").read_text()
    assert "| cavia | id |" in (ray_runs / "cartpole" / "eval.log").read_text()

    # A second call reuses every finished run and evaluates them again, with the same numbers.
    assert bench.main(_args(tmp_path / "ray2.json", ray_runs, "--backend", "ray")) == 0
    captured = capsys.readouterr()
    assert captured.out.count("[reuse]") == 2
    assert "[trained]" not in captured.out + captured.err
    again = json.loads((tmp_path / "ray2.json").read_text())["families"]["cartpole"]
    assert json.dumps(again["summary"]) == json.dumps(rf["summary"])


def _pids_with_open(path: Path) -> list[int]:
    """The processes that hold ``path`` open (Linux: /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
            if any(os.readlink(fd) == str(path.resolve()) for fd in fds):
                pids.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker in /proc")
def test_ray_backend_reruns_a_killed_worker_and_names_a_failed_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ray = pytest.importorskip("ray")
    from robometa.config import load_config
    from robometa.train import run_status

    bench = _bench()
    config = ROOT / "configs" / "cartpole_oracle.yaml"
    ray.init(address="local", num_cpus=2)  # not a cluster RAY_ADDRESS may name
    try:
        _, disconnect = bench.connect_ray(None, 2)  # this process's Ray, used as it is
        assert not disconnect

        # A worker killed (SIGKILL: as the OOM killer does) once its run has a checkpoint:
        # Ray runs the job again, which resumes the run there and finishes it.
        run = tmp_path / "runs" / "oracle-seed0"
        run.parent.mkdir(parents=True)
        log = Path(f"{run}.log")
        killed: list[int] = []

        def kill_the_worker() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not killed:
                if (run / "checkpoint.pt").exists():
                    for pid in _pids_with_open(log):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                time.sleep(0.02)

        killer = threading.Thread(target=kill_the_worker, daemon=True)
        killer.start()
        bench.train_runs_ray([(1.0, str(config), 3000, 0, run, False)], ray)
        killer.join()
        assert killed, "the worker was not found"
        assert run_status(run, load_config(config, steps=3000, seed=0)) == "finished"
        captured = capsys.readouterr()
        assert captured.out.count("[trained]") == 1
        # The killed try held the log open, so had not returned: the run finished on a retry.
        assert "3000/3000" in log.read_text()

        # A job that raises is not retried: the sweep stops, naming the run and its log, and
        # the log holds the traceback.
        bad = tmp_path / "runs" / "bad-seed0"
        bad.write_text("a file where the run directory goes")
        t = time.perf_counter()
        with pytest.raises(
            RuntimeError, match=r"training .*bad-seed0 failed; see .*bad-seed0\.log"
        ):
            bench.train_runs_ray([(1.0, str(config), 400, 0, bad, False)], ray)
        assert time.perf_counter() - t < 30
        assert "NotADirectoryError" in Path(f"{bad}.log").read_text()
    finally:
        ray.shutdown()

    # A worker that died on every try: the message names the job, its log and the retries.
    err = bench._ray_failure(ray, ray.exceptions.WorkerCrashedError(), "training r", "r.log")
    assert "training r failed: its Ray worker died" in str(err)
    assert f"each of {bench.RAY_MAX_RETRIES + 1} tries; see r.log" in str(err)


def test_an_unreachable_address_fails_fast_naming_it(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    bench = _bench()
    t = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        bench.main(
            _args(
                tmp_path / "a.json",
                tmp_path / "runs",
                "--backend",
                "ray",
                "--address",
                "127.0.0.1:1",
            )
        )
    assert time.perf_counter() - t < 15
    message = str(exc.value.code)
    assert "127.0.0.1:1" in message and "\n" not in message
    assert not (tmp_path / "runs").exists()  # nothing planned or trained
    with pytest.raises(SystemExit) as exc:
        bench.main(
            _args(
                tmp_path / "a.json", tmp_path / "runs", "--backend", "ray", "--address", "nonsense"
            )
        )
    assert "is not auto or HOST:PORT" in str(exc.value.code)


def test_without_ray_the_ray_backend_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray: ModuleNotFoundError
    bench = _bench()
    with pytest.raises(SystemExit) as exc:
        bench.main(_args(tmp_path / "a.json", tmp_path / "runs", "--backend", "ray"))
    assert exc.value.code == '--backend ray needs Ray: pip install "robometa[ray]"'
    assert not (tmp_path / "runs").exists()


def test_address_needs_the_ray_backend(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bench = _bench()
    with pytest.raises(SystemExit):
        bench.main(_args(tmp_path / "a.json", tmp_path / "runs", "--address", "auto"))
    assert "--address needs --backend ray" in capsys.readouterr().err
