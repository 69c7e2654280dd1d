"""Where a meta-learner's tasks run: in the training process (``local``, the default) or on
Ray workers (``robometa train CONFIG --backend ray [--address auto|HOST:PORT]
[--num-workers N]``; ``pip install "robometa[ray]"``). Nothing imports ``ray`` unless asked.

With ``ray``, the task slots of a gradient meta-learner (the ``meta.task_pool`` training
robots: their envs, support rings, replay buffers and random streams) are dealt to N Ray actors
(slot i to worker i mod N) that live for the whole run; the learner keeps a copy of the data:

* each round of collection, the workers collect their slots' support and query transitions
  with the meta-parameters (one object in Ray's store, sent once per round);
* each outer step, every worker takes its slots' batches of the meta-batch, runs their inner
  loops and returns the gradient of its share of the outer loss (Reptile: its share of the
  adaptation displacement); the learner sums the shares in worker order, clips and steps Adam.
  The meta-parameters, their target copy and the inner rates travel once per outer step (one
  object in the store that every worker reads), not once per task.

**Same results as local.** A run has one random stream, the learner's: it picks each
round's tasks, explores, seeds the episodes and draws the batches. The workers collect in the
order the local backend does, one task after another, each continuing the stream where the
previous one left it (the stream's state travels with the call), so collection does not run
in parallel (it is about a tenth of a meta-learner's time); the learner draws each outer
step's batch indices itself, from its copy of the data, and sends them. So the data are
identical. With one worker, the meta-batch's gradient is computed as the local backend
computes it: bit-identical meta-parameters. With several, each worker's gradient is one
batched product over its own tasks and the learner adds them: the same terms summed in
another order (float rounding, about 1e-7 relative per outer step; over a long run such
differences can flip a greedy action and the runs then drift apart like two seeds).

**Faults.** The learner keeps a copy of every slot's data (each round the workers send back
the transitions they added, a few KB), so checkpoints hold the whole state and ``--resume``
works with either backend. A worker that dies is replaced from that copy (its envs restart
their episodes, seeded apart from the run's stream) and its share of the call is run again;
training goes on (from there it is not the run that had no failure). An address that cannot be reached is a one-line
:class:`BackendError` within :data:`CONNECT_TIMEOUT_S` seconds.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from robometa.methods.gradient import MetaLearner, _TaskSlot
    from robometa.replay import ReplayBuffer

BACKENDS = ("local", "ray")
#: seconds to wait for a ``HOST:PORT`` to accept a connection before giving up
CONNECT_TIMEOUT_S = 5.0
#: seconds to wait for the workers to start (a cluster without free CPUs never starts them)
START_TIMEOUT_S = 180.0
#: how many times one call's worker is replaced before the run stops
MAX_REPLACEMENTS = 3
#: spawn key of the streams that restart a replaced worker's episodes (apart from the run's)
REPLACEMENT_STREAM = 1
RAY_MISSING = '--backend ray needs Ray: pip install "robometa[ray]"'


class BackendError(ValueError):
    """The backend cannot run: Ray missing, a cluster that cannot be reached or has no room
    for the workers (a one-line message naming the address). A ``ValueError``, so the command
    line reports it as it reports any option it cannot use."""


@dataclass(frozen=True)
class Backend:
    """Where training runs its tasks: ``local`` (this process) or ``ray``; ``address``: None
    (start Ray on this machine), ``auto`` (the cluster this machine belongs to) or
    ``HOST:PORT`` (a head node's GCS address, ``ray start --head`` prints it); ``num_workers``:
    None (one per CPU of the cluster, at most one per task slot; the learner's process
    mostly waits on them)."""

    name: str = "local"
    address: str | None = None
    num_workers: int | None = None

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise ValueError(f"backend {self.name!r} is not one of {', '.join(BACKENDS)}")
        if self.name == "local" and (self.address is not None or self.num_workers is not None):
            raise ValueError("--address and --num-workers are options of --backend ray")
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"--num-workers must be >= 1, got {self.num_workers}")
        if self.address not in (None, "auto"):
            parse_address(self.address)

    def task_pool(self, learner: MetaLearner) -> TaskPool:
        """Start the workers that take ``learner``'s task slots."""
        if self.name != "ray":
            raise ValueError(f"the {self.name} backend runs tasks in the training process")
        ray = import_ray()
        threads = learner.cfg.threads
        slots = len(learner.slots)
        wanted = self.num_workers
        started = connect(ray, self.address, max(os.cpu_count() or 1, (wanted or 0) * threads))
        try:
            cpus = int(ray.cluster_resources().get("CPU", 0))
            n = min(wanted or max(1, cpus // threads), slots)
            if n * threads > cpus:
                raise BackendError(
                    f"the Ray cluster at {self.address or 'this machine'} has {cpus} CPUs; "
                    f"{n} workers of {threads} thread(s) need {n * threads} (lower --num-workers)"
                )
            return RayTaskPool(ray, learner, n, started)
        except BaseException:
            if started:
                ray.shutdown()
            raise


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); a clear ``ValueError`` for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BackendError(
            f"--address {address!r} is not auto or HOST:PORT (a port in 1..65535), e.g. "
            "127.0.0.1:6379, the address `ray start --head` prints"
        )
    return host.strip("[]"), int(port)


def import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        if err.name != "ray":  # Ray is there, but something it imports is broken: that error
            raise
        raise BackendError(RAY_MISSING) from None
    return ray


def connect(ray: Any, address: str | None, num_cpus: int = 0) -> bool:
    """Join the cluster at ``address`` or (None) start Ray here with ``num_cpus`` CPUs (0:
    this machine's); whether this call connected it (the caller then ends with
    ``ray.shutdown()``). A process that already called ``ray.init`` keeps its Ray. An address
    that does not parse or cannot be reached is a one-line :class:`BackendError` (a
    ``HOST:PORT`` must accept a TCP connection within :data:`CONNECT_TIMEOUT_S`)."""
    if ray.is_initialized():
        return False
    quiet = {"logging_level": "WARNING", "configure_logging": True}
    if address is None:  # "local": a new Ray, even where RAY_ADDRESS or `ray start` names
        # the cluster a bare ray.init() would join
        cpus = num_cpus if num_cpus > 0 else os.cpu_count() or 1
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, **quiet)
        return True
    if address != "auto":
        host, port = parse_address(address)
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise BackendError(
                f"cannot reach a Ray cluster at {address}: {reason} (start one with `ray start "
                "--head` and give the address it prints, or drop --address to start Ray here)"
            ) from None
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BackendError(f"cannot join the Ray cluster at {address}: {first:.300}") from None
    return True


# ------------------------------------------------------------------------ the worker side


class TaskWorker:
    """One worker's share of a meta-learner's task slots: their envs, data and streams, and
    the learner's network and inner loop (:meth:`MetaLearner.worker`) to run their work with.
    Ray runs it as an actor; the in-process pool (tests) calls it directly."""

    def __init__(
        self, cls: type[MetaLearner], cfg: dict, spec: dict, slots: dict[int, dict]
    ) -> None:
        from robometa.config import config_from_dict

        config = config_from_dict(cfg, source="the learner's config")
        torch.set_num_threads(config.threads)
        self.learner = cls.worker(config, spec)
        self.slots = {i: self.learner.new_slot(i, state) for i, state in slots.items()}

    def pid(self) -> int:
        return os.getpid()

    def _stream(self, state: dict) -> Any:
        """The run's stream, continued from ``state`` (the learner's, passed along)."""
        self.learner.rng.bit_generator.state = state
        return self.learner.rng

    def restart(self, ids: list[int], rng: dict) -> dict:
        """Start a new episode on each slot; the stream's state after it."""
        stream = self._stream(rng)
        for i in ids:
            self.slots[i].restart(stream)
        return stream.bit_generator.state

    def reset(self, tasks: dict[int, dict], rng: dict) -> dict:
        """New tasks, empty data and a new episode (``meta.task_pool: 0``)."""
        from robometa.envs import Task

        lrn, stream = self.learner, self._stream(rng)
        for i, task in tasks.items():
            slot = self.slots[i]
            slot.task = Task(task)
            slot.clear(lrn.cfg.adaptation.support_size, lrn.obs_dim)
            slot.restart(stream)
        return stream.bit_generator.state

    def load(self, slots: dict[int, dict], net: dict) -> None:
        """The slots' tasks and data and the network's state (its input scales) from a
        checkpoint; the slots' envs and their episodes are kept, as a local resume keeps them."""
        self.learner.net.load_state_dict(net)
        for i, state in slots.items():
            old = self.slots.get(i)
            new = self.learner.new_slot(i, state)
            if old is not None:
                new._env, new.episode = old._env, old.episode
            self.slots[i] = new

    def collect(
        self, ids: list[int], shared: dict, epsilon: float, rng: dict
    ) -> tuple[dict[int, dict], dict]:
        """Support, adaptation and query on each slot (one round), in order, with the
        meta-parameters and inner rates in ``shared``; per slot the
        returns of the episodes that ended and what was added to its buffers; the stream's
        state after."""
        stream = self._stream(rng)
        lrn = self.learner
        _unflatten(shared["meta"], lrn.meta_params)
        _unflatten(shared["lrs"], lrn.lrs)
        meta = {k: v.detach() for k, v in lrn.meta_params.items()}
        out = {}
        for i in ids:
            slot = self.slots[i]
            before = slot.replay.added, slot.support.added
            returns = lrn._support_and_query(slot, meta, epsilon)
            out[i] = {
                "returns": returns,
                "replay": _added(slot.replay, before[0]),
                "support": _added(slot.support, before[1]),
            }
        return out, stream.bit_generator.state

    def outer(
        self, ids: list[int], indices: list, shared: dict, target: Any, total: int
    ) -> dict[str, Any]:
        """This worker's share of one outer step over its slots ``ids`` of a meta-batch of
        ``total`` tasks, their batches at ``indices`` (the learner drew them), with the
        meta-parameters and inner rates in ``shared`` and the target network ``target`` (None:
        the one it was last sent): their losses and the gradient of their share of the mean
        outer loss (Reptile: their share of the mean adaptation displacement), flat; and
        ``compute_s``, the seconds this call took here (what the benchmarks set beside the
        learner's wall time per outer step)."""
        start = time.perf_counter()
        lrn = self.learner
        _unflatten(shared["meta"], lrn.meta_params)
        _unflatten(shared["lrs"], lrn.lrs)
        if target is not None:
            _unflatten(target, lrn.target)
        support, query = lrn._batches_at([self.slots[i] for i in ids], indices)
        whole = len(ids) == total
        if lrn.variant.reptile:
            with torch.no_grad():
                losses, deltas = lrn._task_losses(support, query)
            share = _flatten(
                {k: d.mean(0) if whole else d.sum(0) / total for k, d in deltas.items()}
            )
        else:
            named = lrn.outer_parameters()
            for v in [*named.values(), *lrn.meta_params.values()]:
                v.grad = None
            losses, _ = lrn._task_losses(support, query)
            (losses.mean() if whole else losses.sum() / total).backward()
            share = _flatten(
                {k: v.grad if v.grad is not None else torch.zeros_like(v) for k, v in named.items()}
            )
        return {
            "losses": losses.detach().numpy(),  # an array pickles far faster than a tensor
            "share": share,
            "compute_s": time.perf_counter() - start,
        }


def _flatten(tensors: dict[str, torch.Tensor]) -> np.ndarray:
    """The tensors' values as one float32 vector, in the dict's order (what travels: one
    array serializes far faster than a dict of tensors)."""
    if not tensors:
        return np.zeros(0, np.float32)
    return np.concatenate([t.detach().reshape(-1).numpy() for t in tensors.values()])


def _unflatten(vec: np.ndarray, into: dict[str, torch.Tensor]) -> None:
    """Copy :func:`_flatten`'s vector back into tensors of the same names and shapes."""
    at = 0
    with torch.no_grad():
        for t in into.values():
            n = t.numel()
            t.copy_(torch.from_numpy(np.array(vec[at : at + n])).view_as(t))
            at += n
    if at != len(vec):
        raise ValueError(f"a parameter vector of {len(vec)} values for {at} parameters")


def _added(buf: ReplayBuffer, before: int) -> dict[str, Any] | None:
    """What ``buf`` took since its count was ``before``: the transitions in order, or (a
    whole ring's worth or more) its state."""
    n = buf.added - before
    if n == 0:
        return None
    if n < buf.capacity:
        return {"latest": tuple(buf.latest(n))}
    return {"state": buf.state_dict()}


def _apply(buf: ReplayBuffer, added: dict[str, Any] | None) -> None:
    """Replay on the learner's copy what a worker's buffer took (:func:`_added`)."""
    if added is None:
        return
    if "state" in added:
        buf.load_state_dict(added["state"])
        return
    obs, action, reward, nxt, term = added["latest"]
    for j in range(len(action)):
        buf.add(obs[j].numpy(), int(action[j]), float(reward[j]), nxt[j].numpy(), bool(term[j]))


# ------------------------------------------------------------------------ the learner side


class TaskPool:
    """The workers that own a learner's task slots (slot i on worker i mod N), seen from the
    learner; the slots it is given are the learner's copies (:mod:`robometa.distributed`).
    Subclasses say how a call reaches a worker."""

    def __init__(self, learner: MetaLearner, n: int) -> None:
        self.cls = type(learner)
        self.cfg = learner.cfg.to_dict()
        self.spec = learner.worker_spec()
        self.copies = learner.slots
        self.index = {id(s): i for i, s in enumerate(learner.slots)}
        self.n = n
        self.seed = learner.cfg.seed
        self.replaced = 0
        #: the target network each worker holds, as (epoch, version); epoch: checkpoint loads
        self.sent_target: dict[int, tuple[int, int]] = {}
        self.epoch = 0
        #: pickled bytes of the last outer step's broadcast and of the shares sent back
        self.last_bytes: dict[str, int] = {}
        self.measure_bytes = False
        self.workers = [self._spawn(w) for w in range(n)]

    # how a call reaches a worker
    def _start(self, w: int) -> Any:
        raise NotImplementedError

    def _submit(self, worker: Any, method: str, *args: Any) -> Any:
        raise NotImplementedError

    def _result(self, w: int, pending: Any) -> Any:
        """The call's result; :class:`WorkerLost` when its worker died."""
        raise NotImplementedError

    def _share(self, value: Any) -> Any:
        """``value`` as every worker of a call reads it (once in Ray's store)."""
        return value

    def _stop(self, worker: Any) -> None:
        pass

    # the slots
    def owner(self, i: int) -> int:
        return i % self.n

    def _ids(self, slots: list[_TaskSlot]) -> dict[int, list[int]]:
        """Slot indices by worker, in the order given."""
        groups: dict[int, list[int]] = {}
        for slot in slots:
            i = self.index[id(slot)]
            groups.setdefault(self.owner(i), []).append(i)
        return groups

    def _states(self, w: int) -> dict[int, dict]:
        return {i: self.cls.slot_state(s) for i, s in enumerate(self.copies) if self.owner(i) == w}

    def _spawn(self, w: int) -> Any:
        return self._start(w)

    def _run(
        self, calls: dict[int, tuple], again: Callable[[int, tuple], tuple] | None = None
    ) -> dict[int, Any]:
        """``calls``: worker -> (method, *args), all at once; the results by worker. A worker
        that died is replaced from the learner's copies, its episodes restarted, and its call
        run again (``again(w, call)``: the call as a new worker needs it; at most
        :data:`MAX_REPLACEMENTS` times)."""
        pending = {w: self._submit(self.workers[w], *call) for w, call in calls.items()}
        results = {}
        for w, call in calls.items():
            for attempt in range(MAX_REPLACEMENTS + 1):
                try:
                    results[w] = self._result(w, pending[w])
                    break
                except WorkerLost as err:
                    if attempt == MAX_REPLACEMENTS:
                        raise BackendError(
                            f"task worker {w} died {attempt + 1} times in one {call[0]} call; "
                            f"the run stops (last: {err})"
                        ) from None
                    self._replace(w, err)
                    if again is not None:
                        call = again(w, call)
                    pending[w] = self._submit(self.workers[w], *call)
        return results

    def _replace(self, w: int, err: Exception) -> None:
        print(
            f"robometa: task worker {w} died ({err}); replacing it from the learner's copy of "
            "its tasks and running its share again (its episodes restart)",
            file=sys.stderr,
            flush=True,
        )
        self._stop(self.workers[w])
        self.replaced += 1
        self.sent_target.pop(w, None)
        self.workers[w] = self._spawn(w)
        ids = [i for i in range(len(self.copies)) if self.owner(i) == w]
        # seeded apart from the run's stream, which stays where the lost call found it
        apart = np.random.default_rng([self.seed, REPLACEMENT_STREAM, self.replaced])
        self._result(w, self._submit(self.workers[w], "restart", ids, apart.bit_generator.state))

    def _in_turn(
        self,
        slots: list[_TaskSlot],
        rng: np.random.Generator,
        call: Callable[[list[int]], tuple],
        done: Callable[[list[int], Any], None] | None = None,
    ) -> None:
        """``call(ids)`` -> (method, *args) on each run of consecutive ``slots`` one worker
        owns, one after another, the run's stream passed along (its state is the last
        argument and comes back with the result); ``rng`` continues from where the last left
        it. ``done(ids, result)`` as each run returns, before the next is sent: the learner's
        copies take what a run added before a later run's worker could die and be rebuilt
        from them."""
        runs: list[tuple[int, list[int]]] = []
        for slot in slots:
            i = self.index[id(slot)]
            w = self.owner(i)
            if runs and runs[-1][0] == w:
                runs[-1][1].append(i)
            else:
                runs.append((w, [i]))
        state = rng.bit_generator.state
        for w, ids in runs:
            result = self._run({w: (*call(ids), state)})[w]
            if isinstance(result, tuple):
                result, state = result
            else:
                result, state = None, result
            if done is not None:
                done(ids, result)
        rng.bit_generator.state = state

    # what the learner asks
    def restart(self, slots: list[_TaskSlot], rng: np.random.Generator) -> None:
        self._in_turn(slots, rng, lambda ids: ("restart", ids))

    def reset(self, slots: list[_TaskSlot], rng: np.random.Generator) -> None:
        """The copies already hold their new tasks and empty data; the workers take them."""
        self._in_turn(
            slots, rng, lambda ids: ("reset", {i: dict(self.copies[i].task) for i in ids})
        )

    def load(self, learner: MetaLearner) -> None:
        """The copies and the network were loaded from a checkpoint; the workers take their
        data and the network's state (and, at their next outer step, the target network)."""
        self.spec = learner.worker_spec()  # what a replacement is built from
        net = self.spec["net"]
        self._run({w: ("load", self._states(w), net) for w in range(self.n)})
        self.epoch += 1

    def collect(
        self, learner: MetaLearner, slots: list[_TaskSlot], meta: dict, epsilon: float
    ) -> list[float]:
        """One round of ``learner``'s collection on ``slots`` with the meta-parameters
        ``meta`` (and its inner rates, learned ones too); the finished episodes' returns in
        slot order."""
        ref = self._share({"meta": _flatten(meta), "lrs": _flatten(learner.lrs)})
        returns: list[float] = []

        def take(ids: list[int], result: dict[int, dict]) -> None:
            for i in ids:
                r = result[i]
                _apply(self.copies[i].replay, r["replay"])
                _apply(self.copies[i].support, r["support"])
                returns.extend(r["returns"])

        self._in_turn(slots, learner.rng, lambda ids: ("collect", ids, ref, epsilon), take)
        return returns

    def outer(self, learner: MetaLearner, slots: list[_TaskSlot]) -> torch.Tensor:
        """One outer step of ``learner`` on the meta-batch ``slots``: the batch indices drawn
        here, the workers' shares summed, then Adam (or Reptile's move); the tasks' losses in
        slot order."""
        drawn = learner._batch_indices(slots)
        # int32: half the bytes of numpy's int64, the same transitions (buffers hold < 2**31)
        small = [tuple(None if a is None else a.astype(np.int32) for a in pair) for pair in drawn]
        indices = dict(zip((self.index[id(s)] for s in slots), small, strict=True))
        shared = {"meta": _flatten(learner.meta_params), "lrs": _flatten(learner.lrs)}
        ref = self._share(shared)
        # The target network changes every meta.target_update_interval outer steps: a worker
        # gets it only when it does (or when it has not got this one yet).
        version = (self.epoch, learner.outer_steps // learner.cfg.meta.target_update_interval)
        groups = self._ids(slots)
        stale = [w for w in groups if self.sent_target.get(w) != version]
        target = self._share(_flatten(learner.target)) if stale else None
        total = len(slots)
        calls = {
            w: ("outer", ids, [indices[i] for i in ids], ref, target if w in stale else None, total)
            for w, ids in groups.items()
        }

        def again(w: int, call: tuple) -> tuple:  # a new worker holds no target yet
            return (*call[:4], self._share(_flatten(learner.target)), *call[5:])

        results = self._run(calls, again)
        for w in groups:
            self.sent_target[w] = version
        if self.measure_bytes:
            self.last_bytes = {
                "broadcast": len(pickle.dumps(shared)),
                "target": len(pickle.dumps(_flatten(learner.target))) if stale else 0,
                "indices": len(pickle.dumps(indices)),
                "shares": sum(len(pickle.dumps(r["share"])) for r in results.values()),
                "workers": len(results),
            }
        position = {}
        for w, ids in groups.items():
            for j, i in enumerate(ids):
                position[i] = (w, j)
        losses = torch.from_numpy(
            np.stack(
                [results[w]["losses"][j] for w, j in (position[self.index[id(s)]] for s in slots)]
            )
        )
        order = sorted(results)
        summed = results[order[0]]["share"]
        for w in order[1:]:
            summed = summed + results[w]["share"]
        if learner.variant.reptile:
            step = {k: torch.zeros_like(learner.meta_params[k]) for k in learner.lrs}
            _unflatten(summed, step)
            learner._reptile_step(step)
            return losses
        named = learner.outer_parameters()
        grads = {k: torch.zeros_like(v) for k, v in named.items()}
        _unflatten(summed, grads)
        for name, p in named.items():
            p.grad = grads[name]
        return learner._gradient_step(losses)

    def pids(self) -> list[int]:
        """Each worker's process id (tests kill one)."""
        return [int(p) for p in self._run({w: ("pid",) for w in range(self.n)}).values()]

    def close(self) -> None:
        for worker in self.workers:
            self._stop(worker)
        self.workers = []


class WorkerLost(RuntimeError):
    """A worker died (its process ended) during a call."""


class RayTaskPool(TaskPool):
    """The pool's workers as Ray actors of ``cfg.threads`` CPUs each."""

    def __init__(self, ray: Any, learner: MetaLearner, n: int, started: bool) -> None:
        self.ray = ray
        self.started = started
        self.actor = ray.remote(num_cpus=learner.cfg.threads, max_restarts=0)(TaskWorker)
        self.workers = []
        try:
            super().__init__(learner, n)
            ray.get([w.pid.remote() for w in self.workers], timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            free = ray.available_resources().get("CPU", 0)
            self.close()
            raise BackendError(
                f"{n} task workers of {learner.cfg.threads} CPU(s) did not start within "
                f"{START_TIMEOUT_S:.0f} s: the Ray cluster has {free:.0f} free CPUs"
            ) from None
        except ray.exceptions.RayActorError as err:
            self.close()
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise BackendError(
                f"a task worker could not start on the Ray cluster ({first:.300}); every node "
                "needs robometa and its dependencies (torch, PyBullet) installed"
            ) from None
        except BaseException:  # none is left holding CPUs
            self.close()
            raise

    def _start(self, w: int) -> Any:
        return self.actor.remote(self.cls, self.cfg, self.spec, self._states(w))

    def _submit(self, worker: Any, method: str, *args: Any) -> Any:
        return getattr(worker, method).remote(*args)

    def _result(self, w: int, pending: Any) -> Any:
        ex = self.ray.exceptions
        try:
            return self.ray.get(pending)
        except ex.RayTaskError as err:  # the worker's code raised: the run's own error
            raise err.as_instanceof_cause() from None
        except ex.RayActorError as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise WorkerLost(f"{type(err).__name__}: {first:.200}") from None

    def _share(self, value: Any) -> Any:
        return self.ray.put(value)

    def _stop(self, worker: Any) -> None:
        try:
            self.ray.kill(worker)
        except Exception as err:  # already gone: nothing left to stop
            print(f"robometa: stopping a task worker: {err}", file=sys.stderr)

    def close(self) -> None:
        super().close()
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
            self.started = False


class InlineTaskPool(TaskPool):
    """The same workers called directly in this process, one after another: what the Ray
    pool computes, without Ray (the tests' reference for sharding and fault handling).
    ``lose``: called with (worker, method) before each call; returning True makes that call
    fail as a dead worker's would."""

    def __init__(
        self, learner: MetaLearner, n: int, lose: Callable[[int, str], bool] | None = None
    ) -> None:
        self.lose = lose
        super().__init__(learner, n)

    def _start(self, w: int) -> Any:
        # the states are copied as Ray would copy them: the worker owns its own objects
        states = pickle.loads(pickle.dumps(self._states(w)))
        return (w, TaskWorker(self.cls, self.cfg, self.spec, states))

    def _submit(self, worker: Any, method: str, *args: Any) -> Any:
        w, obj = worker
        if self.lose is not None and self.lose(w, method):
            return WorkerLost(f"worker {w} lost in {method}")
        return pickle.loads(pickle.dumps(getattr(obj, method)(*pickle.loads(pickle.dumps(args)))))

    def _result(self, w: int, pending: Any) -> Any:
        if isinstance(pending, WorkerLost):
            raise pending
        return pending

    def _stop(self, worker: Any) -> None:
        for slot in worker[1].slots.values():
            slot.close()
