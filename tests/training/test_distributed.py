"""Where a meta-learner's tasks run (:mod:`robometa.distributed`): the same results on the local
backend and on task workers, a lost worker replaced, checkpoints that resume with either.

The fast tests run the workers in this process (:class:`InlineTaskPool`: the Ray pool's logic,
its calls pickled as Ray would pickle them); the slow ones start a local Ray
(``ray.init(num_cpus=2)``) and kill a real worker process."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

import robometa.algorithms
from robometa.config import load_config
from robometa.distributed import (
    Backend,
    BackendError,
    InlineTaskPool,
    TaskPool,
    parse_address,
)
from robometa.methods.gradient import VARIANTS, MetaLearner
from robometa.train import make_algorithm, read_checkpoint, train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = [
    "meta.task_pool=6",
    "meta.meta_batch=4",
    "meta.collect_steps=10",
    "meta.updates_per_collect=3",
    "meta.query_batch=16",
    "adaptation.support_size=20",
    "logging.progress=false",
    "logging.eval_every=0",
]
#: several workers sum their gradient shares in another order: float rounding per outer step
SUMMED_ATOL = 1e-6


def tiny(algorithm: str, *extra: str, steps: int = 240):
    return load_config(CONFIGS / f"cartpole_{algorithm}.yaml", [*TINY, *extra], steps=steps)


class Inline(Backend):
    """``--backend ray`` whose workers are :class:`InlineTaskPool`'s (no Ray)."""

    def __init__(self, n: int, lose=None) -> None:
        super().__init__("ray", None, n)
        object.__setattr__(self, "lose", lose)

    def task_pool(self, learner: MetaLearner) -> TaskPool:
        return InlineTaskPool(learner, self.num_workers, self.lose)


def trained(cfg, backend=None, rounds: int = 3):
    learner = robometa.algorithms.load(cfg.algorithm)(
        cfg, **({"backend": backend} if backend else {})
    )
    try:
        for _ in range(rounds):
            learner.iterate()
        params = {k: v.detach().clone() for k, v in learner.meta_params.items()}
        lrs = {k: v.detach().clone() for k, v in learner.lrs.items()}
        buffers = [(s.replay.state_dict(), s.support.state_dict()) for s in learner.slots]
        return (
            params,
            lrs,
            buffers,
            learner.env_steps,
            (learner.pool.replaced if learner.pool else 0),
        )
    finally:
        learner.close()


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def same_buffers(a, b) -> bool:
    for (ra, sa), (rb, sb) in zip(a, b, strict=True):
        for x, y in ((ra, rb), (sa, sb)):
            if x["pos"] != y["pos"]:
                return False
            for k in ("obs", "action", "reward", "next_obs", "terminated"):
                if not torch.equal(x[k], y[k]):
                    return False
    return True


@pytest.mark.parametrize("algorithm", list(VARIANTS))
def test_one_worker_is_bit_identical_and_two_agree_to_rounding(algorithm):
    cfg = tiny(algorithm)
    local = trained(cfg)
    one = trained(cfg, Inline(1))
    two = trained(cfg, Inline(2))
    assert max_diff(local[0], one[0]) == 0.0 and max_diff(local[1], one[1]) == 0.0
    assert 0.0 <= max_diff(local[0], two[0]) < SUMMED_ATOL
    assert max_diff(local[1], two[1]) < SUMMED_ATOL
    # the workers collect what the local backend collects: the learner's copies equal its buffers
    assert local[3] == one[3] == two[3] == 3 * 2 * 10 * 4
    assert same_buffers(local[2], one[2]) and same_buffers(local[2], two[2])
    # the meta-parameters moved: the comparison is of a run that learned something
    start = robometa.algorithms.load(algorithm)(cfg)
    try:
        moved = max_diff({k: v.detach() for k, v in start.meta_params.items()}, local[0])
    finally:
        start.close()
    assert moved > 1e-4


def test_task_pool_zero_gives_the_same_tasks_on_workers():
    cfg = tiny("fomaml", "meta.task_pool=0")
    local, two = trained(cfg), trained(cfg, Inline(2))
    assert max_diff(local[0], two[0]) < SUMMED_ATOL
    assert same_buffers(local[2], two[2])


def test_the_learners_copies_equal_the_workers_data():
    cfg = tiny("cavia")
    learner = MetaLearner(cfg, backend=Inline(3))
    try:
        for _ in range(2):
            learner.iterate()
        for i, copy in enumerate(learner.slots):
            own = learner.pool.workers[learner.pool.owner(i)][1].slots[i]
            assert same_buffers(
                [(copy.replay.state_dict(), copy.support.state_dict())],
                [(own.replay.state_dict(), own.support.state_dict())],
            )
            assert copy._env is None  # the learner never built the slot's env
    finally:
        learner.close()


def test_a_lost_worker_is_replaced_and_training_goes_on(capsys):
    calls = {"n": 0}

    def lose(w: int, method: str) -> bool:
        if w == 1 and method == "outer":
            calls["n"] += 1
            return calls["n"] == 2  # worker 1 dies in its second outer step
        return False

    cfg = tiny("maml")
    params, _, buffers, steps, replaced = trained(cfg, Inline(2, lose))
    assert replaced == 1
    assert steps == 3 * 2 * 10 * 4
    assert all(torch.isfinite(v).all() for v in params.values())
    assert "task worker 1 died" in capsys.readouterr().err
    # the replacement's outer step is the one the lost worker would have run: only the
    # restarted episodes differ from then on, so the first round matches the run without loss
    no_loss = trained(cfg, Inline(2), rounds=1)
    lost = trained(cfg, Inline(2, lose), rounds=1)
    assert max_diff(no_loss[0], lost[0]) < SUMMED_ATOL


def lose_once(worker: int, method: str, nth: int):
    """A ``lose`` hook: ``worker``'s ``nth`` call of ``method`` fails as a dead worker's."""
    calls = {"n": 0}

    def lose(w: int, m: str) -> bool:
        if w == worker and m == method:
            calls["n"] += 1
            return calls["n"] == nth
        return False

    return lose


def test_a_worker_lost_in_a_later_collection_run_is_rebuilt_with_the_earlier_runs_data():
    # task_pool 0: the round's slots alternate between the workers, so each collects in
    # several runs a round; worker 0 dies in its second run of the first round
    cfg = tiny("fomaml", "meta.task_pool=0")
    learner = MetaLearner(cfg, backend=Inline(2, lose_once(0, "collect", 2)))
    try:
        learner.iterate()  # (the next round would clear every slot's data again)
        assert learner.pool.replaced == 1
        for i, copy in enumerate(learner.slots):
            own = learner.pool.workers[learner.pool.owner(i)][1].slots[i]
            assert same_buffers(
                [(copy.replay.state_dict(), copy.support.state_dict())],
                [(own.replay.state_dict(), own.support.state_dict())],
            )
    finally:
        learner.close()


def test_a_worker_replaced_in_an_outer_step_gets_the_current_target_network():
    # the target is copied every 2 outer steps; worker 0 dies in its 6th outer step (3 a
    # round), after two copies: its replacement must compute with the target of then
    cfg = tiny("fomaml", "meta.target_update_interval=2")
    clean = trained(cfg, Inline(1), rounds=2)
    lost = trained(cfg, Inline(1, lose_once(0, "outer", 6)), rounds=2)
    assert lost[4] == 1
    assert max_diff(clean[0], lost[0]) == 0.0  # the lost step re-run exactly


def test_the_step_zero_checkpoint_resumes_on_workers(tmp_path, monkeypatch):
    # stopped before the first periodic checkpoint: the one at env step 0 (envs not
    # restarted) is where both resumes start
    cfg = tiny("cavia", "logging.checkpoint_every=400", steps=400)
    train(cfg, tmp_path / "local", stop_after=80)
    local = train(cfg, tmp_path / "local", resume=True)
    train(cfg, tmp_path / "workers", stop_after=80)
    assert read_checkpoint(tmp_path / "workers" / "checkpoint.pt")["algorithm"]["env_steps"] == 0
    monkeypatch.setattr(Backend, "task_pool", lambda self, learner: InlineTaskPool(learner, 1))
    resumed = train(cfg, tmp_path / "workers", resume=True, backend=Backend("ray", None, 1))
    assert max_diff(local.params, resumed.params) == 0.0


def test_a_worker_that_keeps_dying_stops_the_run_with_its_name():
    cfg = tiny("fomaml")
    with pytest.raises(BackendError, match=r"task worker 0 died 4 times in one collect call"):
        trained(cfg, Inline(2, lambda w, method: w == 0 and method == "collect"))


@pytest.mark.parametrize("n", [1, 2])
def test_a_checkpoint_resumes_with_either_backend(tmp_path, monkeypatch, n):
    cfg = tiny("fomaml", "logging.checkpoint_every=80", steps=400)
    train(cfg, tmp_path / "local", stop_after=160)
    whole = train(cfg, tmp_path / "local", resume=True)
    monkeypatch.setattr(Backend, "task_pool", lambda self, learner: InlineTaskPool(learner, n))
    train(cfg, tmp_path / "mixed", stop_after=160, backend=Backend("ray", None, n))
    mixed = train(cfg, tmp_path / "mixed", resume=True)  # the second half on the local backend
    diff = max_diff(whole.params, mixed.params)
    assert diff == 0.0 if n == 1 else diff < SUMMED_ATOL
    state = read_checkpoint(tmp_path / "mixed" / "checkpoint.pt")
    assert state["finished"] and state["algorithm"]["env_steps"] == 400
    # and the other way: a local run's checkpoint continued by the workers
    monkeypatch.undo()
    train(cfg, tmp_path / "other", stop_after=160)
    monkeypatch.setattr(Backend, "task_pool", lambda self, learner: InlineTaskPool(learner, n))
    other = train(cfg, tmp_path / "other", resume=True, backend=Backend("ray", None, n))
    diff = max_diff(whole.params, other.params)
    assert diff == 0.0 if n == 1 else diff < SUMMED_ATOL


def test_backend_options_are_checked():
    with pytest.raises(ValueError, match="'gpu' is not one of local, ray"):
        Backend("gpu")
    with pytest.raises(ValueError, match="options of --backend ray"):
        Backend("local", num_workers=2)
    with pytest.raises(ValueError, match="--num-workers must be >= 1"):
        Backend("ray", num_workers=0)
    with pytest.raises(ValueError, match=r"--address 'head' is not auto or HOST:PORT"):
        Backend("ray", address="head")
    assert parse_address("10.0.0.5:6379") == ("10.0.0.5", 6379)


def test_dqn_says_it_trains_locally_only():
    cfg = load_config(CONFIGS / "cartpole_dr.yaml", ["logging.progress=false"], steps=1000)
    with pytest.raises(ValueError, match="'dqn' trains on the local backend only; --backend ray"):
        make_algorithm(cfg, Backend("ray", None, 2))


def test_the_cli_names_an_unreachable_cluster(tmp_path, capsys):
    pytest.importorskip("ray")
    from robometa.cli import main

    t = time.perf_counter()
    rc = main(
        [
            "train",
            "cartpole_fomaml",
            "--backend",
            "ray",
            "--address",
            "127.0.0.1:1",
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "1000",
        ]
    )
    assert rc == 2 and time.perf_counter() - t < 15
    err = capsys.readouterr().err
    assert "cannot reach a Ray cluster at 127.0.0.1:1" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing of the run is left behind


# ---------------------------------------------------------------------------- with Ray


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_workers_match_the_local_backend(ray_cluster):
    cfg = tiny("maml")
    local = trained(cfg)
    one = trained(cfg, Backend("ray", None, 1))
    two = trained(cfg, Backend("ray", None, 2))
    assert max_diff(local[0], one[0]) == 0.0
    assert max_diff(local[0], two[0]) < SUMMED_ATOL
    assert same_buffers(local[2], two[2])
    assert ray_cluster.is_initialized()  # the pool kept the Ray it did not start


@pytest.mark.slow
def test_a_killed_ray_worker_is_replaced_and_the_run_resumes(ray_cluster, tmp_path, monkeypatch):
    killed = []
    iterate = MetaLearner.iterate

    def kill_once(self):
        if self.pool is not None and not killed:
            pid = self.pool.pids()[1]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return iterate(self)

    monkeypatch.setattr(MetaLearner, "iterate", kill_once)
    cfg = tiny("fomaml", "logging.checkpoint_every=80", steps=400)
    run = tmp_path / "run"
    train(cfg, run, stop_after=240, backend=Backend("ray", None, 2))
    assert killed
    state = read_checkpoint(run / "checkpoint.pt")
    assert state["algorithm"]["env_steps"] == 240
    monkeypatch.setattr(MetaLearner, "iterate", iterate)
    policy = train(cfg, run, resume=True)  # the rest on the local backend
    assert read_checkpoint(run / "checkpoint.pt")["finished"]
    assert all(torch.isfinite(v).all() for v in policy.params.values())
