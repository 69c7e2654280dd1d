"""The trainer interface every method family implements, and its defaults.

:func:`robometa.train.train` drives any registered algorithm through :class:`Method`: it builds
the class from the validated config, calls :meth:`Method.iterate` until ``dqn.total_steps``,
takes checkpoints at :meth:`Method.boundary` (every env restarts there, so a resumed run
continues exactly) and saves :meth:`Method.policy` as ``policy.pt``.

Beyond training, a family owns two things the rest of robometa asks it for (the rsl_rl
``as_onnx`` pattern): its network, built for training (:meth:`Method.network_from_config`)
and rebuilt from a saved policy (:meth:`Method.network_from_spec`, which
:meth:`robometa.policy.Policy.load` calls), and what its bundle holds
(:meth:`Method.write_bundle`: the graphs and arrays, and their manifest entries). The
defaults are the Q-network of :mod:`robometa.networks` and the ``gradient`` bundle kind
(``policy.onnx``, ``adapt.onnx``, ``params.npz``, ``lrs.npz``), which every builtin family
uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from robometa.networks import NetworkSpec, QNetwork

if TYPE_CHECKING:
    from robometa.config import Config
    from robometa.policy import Policy


class Method:
    """Base class of a trainer (see the module docstring); ``__init__(cfg)`` builds it."""

    #: the network class :meth:`network_from_config` builds and :meth:`network_from_spec`
    #: rebuilds (a family with another head overrides this or the methods)
    network_class: ClassVar[type[QNetwork]] = QNetwork
    #: where its training's work can run: ``robometa train --backend`` (a trainer that
    #: lists more than ``local`` takes a ``backend=`` keyword, :mod:`robometa.distributed`)
    backends: ClassVar[tuple[str, ...]] = ("local",)
    #: the module whose ``write_bundle`` and ``check_parity`` :meth:`write_bundle` and
    #: :meth:`check_bundle` call: the family's bundle kind (the default: ``gradient``)
    bundle_writer: ClassVar[str] = "robometa.bundle_gradient"

    cfg: Config
    env_steps: int
    rng: np.random.Generator

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    @property
    def steps_per_iteration(self) -> int:
        """Env steps one :meth:`iterate` takes: a run ends at the first multiple of this at
        or past ``dqn.total_steps``."""
        raise NotImplementedError

    def iterate(self) -> dict[str, Any]:
        """One round of collection and learning: ``returns`` (finished episodes), ``loss``
        (a list), ``epsilon``."""
        raise NotImplementedError

    def boundary(self) -> None:
        """Restart every env: checkpoints are taken here."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def policy(self) -> Policy:
        raise NotImplementedError

    def close(self) -> None:
        """Release the envs."""

    @property
    def selectable(self) -> bool:
        """Whether :meth:`policy` is now a candidate for model selection (``logging.eval_every``):
        a family whose deployed policy is not trained yet in an early phase says ``False``
        there, and the run selects among later policies only."""
        return True

    # -------------------------------------------------------------- what the family owns

    @classmethod
    def evaluation_method(
        cls,
        policy: Policy,
        name: str,
        support_epsilon: float,
        lrs: Mapping[str, torch.Tensor] | None = None,
    ) -> Any:
        """How evaluation, model selection and play adapt this family's trained ``policy``: an
        :class:`robometa.evaluate.Method` (initial actor, support set -> adapted actors). The
        default takes gradient steps of the policy's inner loss with its learning rates
        (``lrs`` overrides them; ``{}``: evaluated as it is); a family that adapts in another
        way (inferring a context, a recurrent state) overrides this."""
        from robometa.evaluate import PolicyMethod

        return PolicyMethod(name, policy, support_epsilon, lrs=None if lrs is None else dict(lrs))

    @classmethod
    def network_from_config(cls, cfg: Config, obs_dim: int, n_actions: int) -> QNetwork:
        """The (untrained) network training starts from: ``cfg.network`` for an env with
        ``obs_dim`` inputs and ``n_actions`` actions."""
        n = cfg.network
        return cls.network_class(
            NetworkSpec(obs_dim, n_actions, tuple(n.hidden), n.context_dim, n.activation)
        )

    @classmethod
    def network_from_spec(cls, spec: Mapping[str, Any]) -> torch.nn.Module:
        """The (untrained) network a saved policy's ``spec`` describes."""
        spec = dict(spec)
        spec["hidden"] = tuple(spec["hidden"])
        return cls.network_class(NetworkSpec(**spec))

    @classmethod
    def write_bundle(cls, policy: Policy, root: Path, run_dir: Path | None) -> None:
        """Write the bundle's files and ``manifest.json`` into the empty directory ``root``
        (the writer verifies, fsyncs and swaps it into place afterwards): the
        ``write_bundle`` of :attr:`bundle_writer`, by default a ``gradient`` bundle
        (:func:`robometa.bundle_gradient.write_bundle`)."""
        import_module(cls.bundle_writer).write_bundle(policy, root, run_dir)

    @classmethod
    def check_bundle(cls, policy: Policy, bundle_dir: Path) -> Any:
        """Check the bundle :meth:`write_bundle` wrote in ``bundle_dir`` against ``policy`` in
        torch, raising ``AssertionError`` on a mismatch (``export_bundle(verify=True)`` runs
        it before the bundle is swapped into place); the return value is for reporting.

        The ``check_parity`` of :attr:`bundle_writer`; the default checks a ``gradient``
        bundle (:func:`robometa.bundle_gradient.check_parity`: Q-values within 1e-5, one
        adaptation step within 1e-4); a family whose ``bundle_kind`` is another sets
        :attr:`bundle_writer` or overrides this, or its bundles export only without
        verification."""
        return import_module(cls.bundle_writer).check_parity(policy, bundle_dir)


def refuse_learning_rates(policy: Policy, lrs: Mapping[str, Any] | None, how: str) -> None:
    """For the ``evaluation_method`` of a family that takes no fine-tuning learning rates:
    ``ValueError`` when ``lrs`` names any, saying ``how`` the family adapts instead."""
    if lrs:
        raise ValueError(
            f"{policy.algorithm!r} {how} (got learning rates for {', '.join(sorted(lrs))})"
        )
