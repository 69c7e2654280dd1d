"""A trained policy with everything adaptation needs: what a run hands to eval and export.

Saved as ``policy.pt`` in a run directory. The file holds only tensors, numbers, strings and
lists (loaded with ``torch.load(weights_only=True)``: no pickled code), plus a format version.
Its network is rebuilt by the family of the algorithm it names
(:meth:`robometa.methods.base.Method.network_from_spec`), looked up in the registry
(:mod:`robometa.algorithms`): a file never names code to import.

This module also holds the one atomic writer of robometa's training files
(:func:`write_atomic`, :func:`save_atomic`): policies here and the run's files in
:mod:`robometa.train`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

import robometa.algorithms
from robometa import __version__
from robometa.adaptation import Batch, InnerLoss, adapt
from robometa.networks import Params, QNetwork, q_values

POLICY_FORMAT = 1
POLICY_FILE = "policy.pt"


class RunWriteError(ValueError):
    """A file of a run could not be written (disk full, read-only, a parent that is a regular
    file): one line naming ``path``. A ``ValueError``, so ``robometa`` exits 2 with the
    message; the previous file at ``path`` is unchanged and no temporary file is left."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def os_reason(err: OSError) -> str:
    """What an ``OSError`` says, without its errno prefix."""
    return err.strerror or str(err)


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Fill ``path`` through ``write(f)`` all at once or not at all: the runtime's one atomic
    writer (:func:`robometa.deploy.runtime.atomic_write`: a temporary file next to ``path``,
    fsynced, renamed, removed on any failure), its failure a :class:`RunWriteError`."""
    from robometa.deploy.runtime import WriteError, atomic_write  # onnxruntime: when writing

    try:
        atomic_write(path, write)
    except WriteError as err:
        cause = err.__cause__
        reason = os_reason(cause) if isinstance(cause, OSError) else str(err)
        raise RunWriteError(f"cannot write {path}: {reason}", path) from None


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`write_atomic`: a kill or a full disk keeps the old file."""
    write_atomic(path, lambda f: torch.save(obj, f))


@dataclass
class Policy:
    """Meta-parameters, inner learning rates and inner-loop settings of one trained run.

    ``lrs`` names the parameters that adaptation changes (empty: the method does not adapt);
    each value is a scalar tensor or, for Meta-SGD, a tensor of the parameter's shape.
    """

    algorithm: str
    env_id: str
    net: QNetwork
    params: Params
    lrs: Params
    inner: InnerLoss
    adapt_steps: int = 5
    support_size: int = 200
    privileged: bool = False
    dynamics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    # -------------------------------------------------------------- acting and adapting

    @torch.no_grad()
    def act(self, obs: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """Greedy actions for a batch of observations."""
        return q_values(self.net, params or self.params, obs).argmax(dim=1)

    def adapted(self, batch: Batch, steps: int | None = None) -> tuple[Params, list[float]]:
        """Parameters after ``steps`` inner steps on ``batch`` (no outer graph kept)."""
        steps = self.adapt_steps if steps is None else steps
        if not self.lrs or steps == 0:
            return self.params, []
        with torch.no_grad():
            return adapt(self.net, self.params, self.lrs, batch, self.inner, steps)

    # -------------------------------------------------------------- persistence

    def state(self) -> dict[str, Any]:
        buffers = {k: v.detach().clone() for k, v in self.net.named_buffers()}
        return {
            "format": POLICY_FORMAT,
            "robometa_version": __version__,
            "torch_version": str(torch.__version__),
            "algorithm": self.algorithm,
            "env_id": self.env_id,
            "spec": json.dumps(asdict(self.net.spec)),
            "params": {k: v.detach().clone() for k, v in self.params.items()},
            "buffers": buffers,
            "lrs": {k: v.detach().clone() for k, v in self.lrs.items()},
            "inner": json.dumps(asdict(self.inner)),
            "adapt_steps": self.adapt_steps,
            "support_size": self.support_size,
            "privileged": self.privileged,
            "dynamics": json.dumps(self.dynamics),
            "config": json.dumps(self.config),
        }

    def save(self, path: str | Path) -> Path:
        """Write atomically: a crash mid-write leaves any previous file intact."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / POLICY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic(self.state(), path)  # a failure is a RunWriteError naming the path
        return path

    @classmethod
    def from_state(cls, state: dict[str, Any], source: str | Path = "<state>") -> Policy:
        if state.get("format") != POLICY_FORMAT:
            raise ValueError(
                f"{source}: policy format {state.get('format')!r} is not supported "
                f"(this robometa reads format {POLICY_FORMAT})"
            )
        net = _network(state["algorithm"], json.loads(state["spec"]), source)
        try:
            net.load_state_dict({**state["params"], **state["buffers"]})
        except RuntimeError as err:  # names or shapes the family's network does not have
            first = (str(err).strip().splitlines() or [""])[0]
            raise ValueError(
                f"{source}: its parameters do not fit the network of algorithm "
                f"{state['algorithm']!r} ({type(net).__name__}): {first}"
            ) from None
        return cls(
            algorithm=state["algorithm"],
            env_id=state["env_id"],
            net=net,
            params={k: v.clone() for k, v in state["params"].items()},
            lrs={k: v.clone() for k, v in state["lrs"].items()},
            inner=InnerLoss(**json.loads(state["inner"])),
            adapt_steps=int(state["adapt_steps"]),
            support_size=int(state["support_size"]),
            privileged=bool(state["privileged"]),
            dynamics=json.loads(state["dynamics"]),
            config=json.loads(state["config"]),
        )

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Load ``policy.pt`` (or the one inside a run directory)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no trained policy at {path}: no such run directory or file")
        if path.is_dir():
            path = path / POLICY_FILE
        if not path.exists():
            raise FileNotFoundError(f"no trained policy at {path} (has the run finished?)")
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as err:  # zip/pickle errors: not a file torch.save wrote
            raise ValueError(
                f"{path} is not a robometa policy file (expected a run directory or its "
                f"{POLICY_FILE}): {type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
            ) from err
        return cls.from_state(state, path)


def _network(algorithm: Any, spec: dict[str, Any], source: str | Path) -> QNetwork:
    """The untrained network of a saved policy, built by its algorithm's family. Only a
    registered name is looked up (nothing the file names is imported); another one is a
    ``ValueError`` naming the file, the name and the registered ones."""
    try:
        family = robometa.algorithms.get(algorithm)
    except ValueError:
        raise ValueError(
            f"{source}: the policy was trained with algorithm {str(algorithm)!r:.80}, which is "
            f"not registered here (registered: {', '.join(robometa.algorithms.names())}); "
            "install the package that registers it"
        ) from None
    return family.load().network_from_spec(spec)
