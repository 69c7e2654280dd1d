"""The algorithm registry: every method robometa can train, by name.

Like the robot families in :data:`robometa.envs.FAMILIES`, each algorithm is a name mapped to a
lazy ``"module:Class"`` entry point (imported only when a run of it starts) plus what the rest
of robometa needs to know without importing it: its method family, whether it adapts, which
bundle kind it exports, what it observes and which config rules it adds. Config validation,
training, evaluation, export, the docs and the benchmarks read this table; nothing else lists
algorithm names.

```python
from robometa.algorithms import register

register(
    "dueling",
    "my_package.dueling:DuelingDQN",  # a class with the trainer interface (robometa.methods)
    family="dqn",
    summary="DQN with a dueling head",
)
```

Installed packages plug in the way gymnasium environments do: an entry point in the group
``robometa.algorithms`` names a function that calls :func:`register`; robometa calls each one
once, the first time the table is read. Only installed code registers algorithms: a config file
names a registered algorithm, never a module.

The builtin table (:data:`BUILTIN`) keeps the order of the README's config reference.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # config imports this module: no import back at run time
    from robometa.config import Config

#: the Python entry-point group installed packages register algorithms through
ENTRY_POINT_GROUP = "robometa.algorithms"
_NAME = re.compile(r"^[a-z][a-z0-9_+-]{0,39}$")
#: a bundle kind's name, as robometa.deploy.kinds.register_kind accepts it
_KIND = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

Check = Callable[["Config", str], None]


@dataclass(frozen=True)
class AlgorithmSpec:
    """What robometa knows about an algorithm before importing it.

    ``family``: the method family (``dqn``, ``gradient``, ...); ``adapts``: the method was
    trained to adapt, so evaluation runs its adaptation (a method that does not adapt is
    evaluated as it is, and may still be fine-tuned: ``fine_tunes``); ``bundle_kind``: the
    ``kind`` its bundle's manifest names, which picks the on-device runtime; ``privileged``:
    its observation carries the true dynamics parameters (the oracle); ``randomized_label``:
    the name evaluation reports it under when it trained on sampled train tasks (``dqn`` is
    domain randomization, ``dr``); ``check(cfg, where)``: rules across config keys, raising
    ``ValueError`` naming the key (``where`` names the file).
    """

    name: str
    entry_point: str
    family: str
    adapts: bool = False
    bundle_kind: str = "gradient"
    privileged: bool = False
    fine_tunes: bool = False
    randomized_label: str = ""
    check: Check | None = None
    summary: str = ""

    def load(self) -> type:
        """The trainer class (imported now, the first time it is needed)."""
        module, attr = self.entry_point.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(
                f"algorithm {self.name!r}: cannot load its entry point {self.entry_point!r}: "
                f"{type(err).__name__}: {err}"
            ) from err

    def label(self, tasks: str) -> str:
        """The name evaluation reports a run under (``tasks``: the run's ``env.tasks``)."""
        return self.randomized_label if self.randomized_label and tasks == "train" else self.name


_REGISTRY: dict[str, AlgorithmSpec] = {}
_plugins_loaded = False


def register(
    name: str,
    entry_point: str,
    *,
    family: str,
    adapts: bool = False,
    bundle_kind: str = "gradient",
    privileged: bool = False,
    fine_tunes: bool = False,
    randomized_label: str = "",
    check: Check | None = None,
    summary: str = "",
    replace: bool = False,
) -> AlgorithmSpec:
    """Add ``name`` to the table (``replace=True`` to redefine one); returns its spec."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"algorithm name {name!r} must be 1-40 characters of lowercase letters, digits, "
            "'_', '+' or '-', starting with a letter"
        )
    if not isinstance(entry_point, str) or not _ENTRY_POINT.match(entry_point):
        raise ValueError(
            f"algorithm {name!r}: entry point {entry_point!r} is not 'package.module:Class'"
        )
    if not isinstance(family, str) or not _NAME.match(family):
        raise ValueError(f"algorithm {name!r}: family {family!r} is not a lowercase name")
    if not isinstance(bundle_kind, str) or not _KIND.match(bundle_kind):
        raise ValueError(
            f"algorithm {name!r}: bundle kind {bundle_kind!r} must be 1 to 64 lowercase "
            "letters, digits, '_' or '-', starting with a letter (what the device runtime's "
            "robometa.deploy.kinds.register_kind accepts)"
        )
    if name in _REGISTRY and not replace:
        raise ValueError(
            f"algorithm {name!r} is already registered (entry point "
            f"{_REGISTRY[name].entry_point!r}); pass replace=True to redefine it"
        )
    spec = AlgorithmSpec(
        name,
        entry_point,
        family,
        adapts=bool(adapts),
        bundle_kind=bundle_kind,
        privileged=bool(privileged),
        fine_tunes=bool(fine_tunes),
        randomized_label=randomized_label,
        check=check,
        summary=summary,
    )
    _REGISTRY[name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove ``name`` (tests that register a toy algorithm clean up with this)."""
    _load_plugins()
    if name not in _REGISTRY:
        raise ValueError(f"algorithm {name!r} is not registered")
    del _REGISTRY[name]


def names() -> tuple[str, ...]:
    """Every registered algorithm, builtins first, in registration order."""
    _load_plugins()
    return tuple(_REGISTRY)


def builtin_names() -> tuple[str, ...]:
    """robometa's own algorithms (what its docs, shipped configs and benchmarks cover: an
    installed plug-in does not change them)."""
    return tuple(n for n in BUILTIN if n in _REGISTRY)


def adapting() -> tuple[str, ...]:
    """The registered algorithms that were trained to adapt."""
    return tuple(n for n in names() if _REGISTRY[n].adapts)


def get(name: str) -> AlgorithmSpec:
    """The spec of ``name``; an unknown name is a ``ValueError`` listing the registered ones."""
    _load_plugins()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown algorithm {name!r}; registered: {', '.join(_REGISTRY)} (a plug-in's "
            f"algorithm is registered once its package is installed: entry-point group "
            f"{ENTRY_POINT_GROUP!r})"
        ) from None


def load(name: str) -> type:
    """The trainer class of ``name``."""
    return get(name).load()


def _load_plugins() -> None:
    """Call every ``robometa.algorithms`` entry point once. A plugin that fails is reported
    (a warning naming it and the error) and skipped: robometa's own algorithms still work."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()()
        except Exception as err:  # a broken third-party package must not break robometa
            warnings.warn(
                f"robometa algorithm plugin {ep.name!r} ({ep.value}) failed to register: "
                f"{type(err).__name__}: {err}",
                stacklevel=2,
            )


# --------------------------------------------------------------------------- builtin rules


def _needs_td_in_inner_loop(why: str) -> Check:
    def check(cfg: Config, where: str) -> None:
        if cfg.adaptation.loss == "model":
            raise ValueError(
                f"config key 'adaptation.loss': {cfg.algorithm} {why}, so it needs 'td' or "
                f"'td+model', got 'model'{where}"
            )

    return check


def _collects_in_rounds(cfg: Config, where: str) -> None:
    if cfg.meta.collect_steps < 1:
        raise ValueError(
            f"config key 'meta.collect_steps': {cfg.algorithm} collects its data in rounds of "
            f"meta.collect_steps env steps per task, so it needs >= 1 (0 never reaches "
            f"dqn.total_steps){where}"
        )


_anil_rule = _needs_td_in_inner_loop(
    "adapts only the heads, and the model loss never reaches the Q head"
)
_reptile_rule = _needs_td_in_inner_loop("learns Q only through its inner loop")


def _all_of(*checks: Check) -> Check:
    def check(cfg: Config, where: str) -> None:
        for c in checks:
            c(cfg, where)

    return check


def _needs_context(cfg: Config, where: str) -> None:
    if cfg.network.context_dim < 1:
        raise ValueError(
            f"config key 'network.context_dim': {cfg.algorithm} needs a context vector (>= 1), "
            f"got {cfg.network.context_dim}{where}"
        )


def gradient_check(adapts: str = "all", reptile: bool = False) -> Check:
    """The config rules of a gradient meta-learner that adapts ``adapts`` (``all``, ``heads``,
    ``context``) and, with ``reptile``, moves toward the adapted parameters: what every builtin
    gradient algorithm registers, and what :class:`robometa.methods.gradient.MetaLearner`
    checks for a plug-in variant."""
    rules: list[Check] = []
    if adapts == "heads":
        rules.append(_anil_rule)
    if adapts == "context":
        rules.append(_needs_context)
    if reptile:
        rules.append(_reptile_rule)
    return _all_of(*rules, _collects_in_rounds)


def context_check(cfg: Config, where: str) -> None:
    """The config rules of the ``context`` family (:mod:`robometa.methods.context`): a context
    vector, collection in rounds, and an outer loss with the TD term (``td``, or ``td+model``
    for the dynamics-prediction auxiliary loss)."""
    _needs_context(cfg, where)
    _collects_in_rounds(cfg, where)
    if cfg.adaptation.loss == "model":
        raise ValueError(
            f"config key 'adaptation.loss': {cfg.algorithm} trains its Q-network and encoder "
            f"with the TD loss, so it needs 'td' or 'td+model' (TD plus the dynamics-prediction "
            f"auxiliary loss), got 'model'{where}"
        )


def taskrate_check(cfg: Config, where: str) -> None:
    """The config rules of ``taskrate`` (:mod:`robometa.methods.taskrate`) besides the
    gradient family's: a task summary (``network.context_dim`` >= 1, the encoder's output),
    at least one inner step to generate rates for, and no learned constant rates."""
    if cfg.network.context_dim < 1:
        raise ValueError(
            f"config key 'network.context_dim': {cfg.algorithm} encodes the support into a "
            f"task summary of this size, so it needs >= 1, got {cfg.network.context_dim}{where}"
        )
    if cfg.adaptation.steps < 1:
        raise ValueError(
            f"config key 'adaptation.steps': {cfg.algorithm} generates a learning rate per "
            f"layer and step, so it needs >= 1 step, got {cfg.adaptation.steps}{where}"
        )
    if cfg.meta.learn_lrs:
        raise ValueError(
            f"config key 'meta.learn_lrs': {cfg.algorithm} generates its inner learning rates "
            f"from the support (adaptation.lr is their base), so it must be false{where}"
        )


def rma_check(cfg: Config, where: str) -> None:
    """The config rules of the ``rma`` family (:mod:`robometa.methods.rma`): an extrinsics
    vector (``network.context_dim`` >= 1), both phases in the budget (``memory.teacher_fraction``
    strictly between 0 and 1), a teacher that starts learning within its phase and whose
    exploration schedule ends within it (``dqn.exploration_fraction`` <=
    ``memory.teacher_fraction``: the teacher's Q is learned as DQN's, and the student's
    epsilon is ``dqn.epsilon_end``, see :meth:`robometa.methods.rma.RMALearner.epsilon`)."""
    if cfg.network.context_dim < 1:
        raise ValueError(
            f"config key 'network.context_dim': {cfg.algorithm} compresses the dynamics "
            f"parameters into an extrinsics vector of this size, so it needs >= 1, got "
            f"{cfg.network.context_dim}{where}"
        )
    fraction = cfg.memory.teacher_fraction
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"config key 'memory.teacher_fraction': {cfg.algorithm} trains its teacher on this "
            f"share of dqn.total_steps and its adaptation module on the rest, so it must be "
            f"strictly between 0 and 1, got {fraction}{where}"
        )
    teacher_steps = int(fraction * cfg.dqn.total_steps)
    if cfg.dqn.learning_starts >= teacher_steps:
        raise ValueError(
            f"config key 'dqn.learning_starts': {cfg.algorithm}'s teacher trains during the "
            f"first {teacher_steps} env steps (memory.teacher_fraction x dqn.total_steps), so "
            f"learning must start before them, got {cfg.dqn.learning_starts}{where}"
        )
    exploration = cfg.dqn.exploration_fraction
    if exploration > fraction:
        raise ValueError(
            f"config key 'dqn.exploration_fraction' is {exploration}, more than config key "
            f"'memory.teacher_fraction' ({fraction}): {cfg.algorithm}'s teacher acts and learns "
            f"during that share of dqn.total_steps only, so its epsilon schedule must end "
            f"within it; set dqn.exploration_fraction <= {fraction}{where}"
        )


def recurrent_check(cfg: Config, where: str) -> None:
    """The config rules of the ``recurrent`` family (:mod:`robometa.methods.recurrent`): a loss
    on every stored sequence after its burn-in (``memory.burn_in`` < ``memory.sequence_length``),
    a TD term in the loss, one-step targets (``dqn.n_step`` 1: the sequence loss bootstraps
    every step from the next), and no context vector (Q is conditioned on the GRU state of
    ``memory.hidden_size`` instead)."""
    m = cfg.memory
    if cfg.dqn.n_step != 1:
        raise ValueError(
            f"config key 'dqn.n_step': {cfg.algorithm} bootstraps each step of a stored "
            f"sequence from the next one (one-step targets), so it needs dqn.n_step 1, got "
            f"{cfg.dqn.n_step}{where}"
        )
    if m.burn_in >= m.sequence_length:
        raise ValueError(
            f"config key 'memory.burn_in': {cfg.algorithm} puts the loss on the steps of each "
            f"stored sequence after its burn-in, so it needs memory.burn_in < "
            f"memory.sequence_length ({m.sequence_length}), got {m.burn_in}{where}"
        )
    if cfg.adaptation.loss == "model":
        raise ValueError(
            f"config key 'adaptation.loss': {cfg.algorithm} trains its Q-network and GRU with "
            f"the TD loss, so it needs 'td' or 'td+model' (TD plus the dynamics-prediction "
            f"auxiliary loss), got 'model'{where}"
        )
    if cfg.network.context_dim != 0:
        raise ValueError(
            f"config key 'network.context_dim': {cfg.algorithm} conditions Q on its GRU state "
            f"(memory.hidden_size sets its size), not on a context vector, so it must be 0, "
            f"got {cfg.network.context_dim}{where}"
        )


def dr_history_check(cfg: Config, where: str) -> None:
    """The config rules of ``dr-history`` (:mod:`robometa.methods.dr_history`): no context
    vector (Q reads the flattened window of the last ``memory.history`` transitions, whose
    size follows from the robot's observation and actions)."""
    if cfg.network.context_dim != 0:
        raise ValueError(
            f"config key 'network.context_dim': {cfg.algorithm} conditions Q on the window of "
            f"its last memory.history transitions (its size follows from the robot and "
            f"memory.history), not on a context vector, so it must be 0, got "
            f"{cfg.network.context_dim}{where}"
        )


_DQN = "robometa.methods.dqn:DQN"
_GRADIENT = "robometa.methods.gradient:MetaLearner"

#: name -> (entry point, keyword arguments of :func:`register`), in the order configs list them
BUILTIN: dict[str, tuple[str, dict[str, Any]]] = {
    "dqn": (
        _DQN,
        {
            "family": "dqn",
            "fine_tunes": True,
            "randomized_label": "dr",
            "summary": "Double DQN over the task distribution (domain randomization)",
        },
    ),
    "oracle": (
        _DQN,
        {
            "family": "dqn",
            "privileged": True,
            "summary": "DQN that observes the true dynamics parameters (privileged oracle)",
        },
    ),
    "maml": (
        _GRADIENT,
        {
            "family": "gradient",
            "adapts": True,
            "check": gradient_check(),
            "summary": "MAML: second-order meta-gradient through the inner steps, all parameters",
        },
    ),
    "fomaml": (
        _GRADIENT,
        {
            "family": "gradient",
            "adapts": True,
            "check": gradient_check(),
            "summary": "first-order MAML",
        },
    ),
    "metasgd": (
        _GRADIENT,
        {
            "family": "gradient",
            "adapts": True,
            "check": gradient_check(),
            "summary": "Meta-SGD: MAML with learned per-parameter inner learning rates",
        },
    ),
    "anil": (
        _GRADIENT,
        {
            "family": "gradient",
            "adapts": True,
            "check": gradient_check("heads"),
            "summary": "ANIL: adapts only the output heads (Q and dynamics)",
        },
    ),
    "cavia": (
        _GRADIENT,
        {
            "family": "gradient",
            "adapts": True,
            "check": gradient_check("context"),
            "summary": "CAVIA: adapts only a context vector fed to the network",
        },
    ),
    "reptile": (
        _GRADIENT,
        {
            "family": "gradient",
            "adapts": True,
            "check": gradient_check(reptile=True),
            "summary": "Reptile: moves the initialization toward each task's adapted parameters",
        },
    ),
    "context": (
        "robometa.methods.context:ContextLearner",
        {
            "family": "context",
            "adapts": True,
            "bundle_kind": "context",
            "check": context_check,
            "summary": "PEARL/MQL-style context encoder: a forward pass over the support "
            "transitions gives the context the Q-network is conditioned on",
        },
    ),
    "hyper": (
        "robometa.methods.hyper:HyperLearner",
        {
            "family": "context",
            "adapts": True,
            "bundle_kind": "context",
            "check": context_check,
            "summary": "hypernetwork head (Ha et al. 2016): the inferred context generates the "
            "weights and bias of the Q-network's output layer",
        },
    ),
    "hyper-context": (
        "robometa.methods.hyper_context:HyperContextLearner",
        {
            "family": "context",
            "adapts": True,
            "bundle_kind": "context",
            "check": context_check,
            "summary": "the hypernetwork head combined with the encoder's conditioning: the "
            "inferred context is fed to the Q body and generates its output layer",
        },
    ),
    "taskrate": (
        "robometa.methods.taskrate:TaskRateLearner",
        {
            "family": "gradient",
            "adapts": True,
            "bundle_kind": "taskrate",
            "check": _all_of(gradient_check(), taskrate_check),
            "summary": "task-conditioned Meta-SGD: a network maps the encoded support set to "
            "the inner learning rates (per layer, per step) of MAML's inner loop",
        },
    ),
    "cavia-encoder": (
        "robometa.methods.cavia_encoder:CaviaEncoderLearner",
        {
            "family": "gradient",
            "adapts": True,
            "bundle_kind": "cavia-encoder",
            "check": gradient_check("context"),
            "summary": "CAVIA whose context starts at a context encoder's guess from the "
            "support, refined by the inner-loss gradient steps",
        },
    ),
    "rma": (
        "robometa.methods.rma:RMALearner",
        {
            "family": "rma",
            "adapts": True,
            "bundle_kind": "history",
            "check": rma_check,
            "summary": "RMA (Kumar et al. 2021): a privileged teacher compresses the dynamics "
            "parameters into extrinsics; an adaptation module estimates them online from the "
            "last memory.history transitions",
        },
    ),
    "recurrent": (
        "robometa.methods.recurrent:RecurrentLearner",
        {
            "family": "recurrent",
            "adapts": True,
            "bundle_kind": "recurrent",
            "check": recurrent_check,
            "summary": "RL^2 / R2D2-style: a GRU over the robot's transitions so far conditions "
            "Q online; trained on stored sequences with burn-in",
        },
    ),
    "dr-history": (
        "robometa.methods.dr_history:DRHistoryDQN",
        {
            "family": "history",
            "bundle_kind": "history",
            "check": dr_history_check,
            "summary": "domain-randomized Double DQN whose input is also its last "
            "memory.history transitions of the episode (a history-dependent DR baseline, "
            "Chen et al. 2022); not meta-trained",
        },
    ),
    "oracle-history": (
        "robometa.methods.dr_history:DRHistoryDQN",
        {
            "family": "history",
            "bundle_kind": "history",
            "privileged": True,
            "check": dr_history_check,
            "summary": "dr-history that also observes the true dynamics parameters: the "
            "privileged oracle with memory (latency and the robot's response need a history "
            "even when the parameters are known)",
        },
    ),
}

for _name, (_entry_point, _kwargs) in BUILTIN.items():
    register(_name, _entry_point, **_kwargs)
