"""The ``taskrate`` bundle kind: guarded gradient steps whose learning rates ``adapt.onnx``
generates from the support set.

The ``taskrate`` method (:mod:`robometa.methods.taskrate`) exports this kind. Its bundles hold
:data:`TASKRATE_LAYOUT`:

| graph | inputs -> outputs |
|---|---|
| ``policy`` (``policy.onnx``) | as the gradient kind's: ``obs`` and the ``param:`` inputs Q uses -> ``q_values``, ``action`` |
| ``adapt`` (``adapt.onnx``) | every ``param:`` (the Q-network's and the rate network's: encoder and rate layers), the transition batch, ``gamma``, ``step`` (int64, the step's index in the ``adapt`` call) -> ``new:`` per adapted parameter, ``loss``, ``rates`` (steps, layers): the rate network over the batch, then one gradient step at row ``min(step, steps - 1)`` |

and ``params.npz`` (no ``lrs.npz``: the rates are generated), plus the gradient kind's manifest
sections (``discount``, ``inner``, ``parameters``) and ``rates``: ``base`` (the configured
``adaptation.lr``), ``range`` (every rate lies in ``[base / range, base * range]``),
``steps`` and ``layers`` (the rates' axes; a parameter takes the rate of its layer, its name
without the last ``.part``).

:class:`TaskRateAdapter` is the gradient kind's runtime (:class:`GradientAdapter`: the same
guard, hold-out, bounded steps, rollback, state files) feeding ``step`` and checking every
``rates`` output: a rate that is not finite or lies outside the declared bounds (a broken
graph) makes that step a failure, rolled back like non-finite parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from robometa.deploy.bundle import (
    ADAPT_GRAPH,
    BATCH_INPUTS,
    GAMMA_INPUT,
    GRAPH_KEYS,
    LOSS_OUTPUT,
    MAX_INNER_STEPS,
    NEW_PREFIX,
    OBS_INPUT,
    PARAM_PREFIX,
    PARAMS_ARRAY,
    POLICY_GRAPH,
    Bundle,
    BundleError,
    BundleLayout,
    GraphContext,
    GraphIO,
    GraphSpec,
    check_int,
    check_object,
    fail,
    is_number,
    manifest_key,
    tensor_spec,
    transition_io,
)
from robometa.deploy.gradient import (
    POLICY_GRAPH_SPEC,
    GradientAdapter,
    check_gradient_manifest,
)
from robometa.deploy.guard import AdaptReport
from robometa.deploy.sessions import param_inputs
from robometa.deploy.transitions import Transitions

#: the kind's name (the manifest's ``kind``)
KIND = "taskrate"
#: the adapt graph's step-index input and its generated-rates output
STEP_INPUT = "step"
RATES_OUTPUT = "rates"
#: float32 slack on the declared bounds of a generated rate
_RATE_SLACK = 1e-5


def layer_of(name: str) -> str:
    """``body.0.weight`` -> ``body.0``: the layer whose rate a parameter takes."""
    return name.rsplit(".", 1)[0]


def rate_bounds(manifest: Mapping[str, Any]) -> tuple[float, float]:
    """The interval every generated rate lies in: ``[base / range, base * range]``."""
    section = manifest[RATES_OUTPUT]
    return section["base"] / section["range"], section["base"] * section["range"]


# ---------------------------------------------------------------------- the bundle layout


def _adapt_io(graph: GraphContext) -> GraphIO:
    adapted = graph.manifest["inner"]["adapted"]
    missing = [k for k in adapted if k not in graph.used]
    if missing:
        raise BundleError(
            f"{graph.where}: no {PARAM_PREFIX} input for adapted parameters {missing}"
        )
    obs_dim = graph.manifest["observation"]["shape"][0]
    inputs, feeds = transition_io(obs_dim)
    inputs[GAMMA_INPUT] = tensor_spec("float", ())
    feeds[GAMMA_INPUT] = np.asarray(graph.manifest["discount"], np.float32)
    inputs[STEP_INPUT] = tensor_spec("int64", ())
    feeds[STEP_INPUT] = np.asarray(0, np.int64)
    outputs = {NEW_PREFIX + k: tensor_spec("float", graph.params[k].shape) for k in adapted}
    outputs[LOSS_OUTPUT] = tensor_spec("float", ())
    section = graph.manifest[RATES_OUTPUT]
    outputs[RATES_OUTPUT] = tensor_spec("float", (section["steps"], len(section["layers"])))
    return GraphIO(inputs, feeds, outputs)


def _rates_probe(where: Path, values: Mapping[str, np.ndarray], manifest: Mapping) -> None:
    """The probe batch's generated rates lie within the declared bounds."""
    problem = rates_problem(values[RATES_OUTPUT], manifest)
    if problem:
        raise BundleError(f"{where}: on a probe batch, {problem}")


def rates_problem(rates: np.ndarray, manifest: Mapping[str, Any]) -> str:
    """Why ``rates`` cannot be stepped with ('' if they can): not finite, or outside the
    manifest's ``[base / range, base * range]``."""
    low, high = rate_bounds(manifest)
    if not np.isfinite(rates).all():
        return f"output {RATES_OUTPUT!r} is not finite"
    if rates.min() < low * (1 - _RATE_SLACK) or rates.max() > high * (1 + _RATE_SLACK):
        return (
            f"output {RATES_OUTPUT!r} spans [{float(rates.min())!r}, {float(rates.max())!r}], "
            f"outside the manifest's rates bounds [{low!r}, {high!r}]"
        )
    return ""


def check_taskrate_manifest(manifest: Mapping[str, Any], where: Path, obs_dim: int) -> None:
    """The gradient kind's sections and ``rates``: ``base`` > 0, ``range`` > 1 (numbers),
    ``steps`` in ``[1, MAX_INNER_STEPS]``, ``layers`` distinct names that cover the layer of
    every adapted parameter."""
    check_gradient_manifest(manifest, where, obs_dim)
    section = check_object(where, RATES_OUTPUT, manifest[RATES_OUTPUT])
    base = manifest_key(section, "base", where, "rates.")
    if not is_number(base) or not 0 < base < float("inf"):
        fail(where, "rates.base", base, "a positive number")
    spread = manifest_key(section, "range", where, "rates.")
    if not is_number(spread) or not 1 < spread < float("inf"):
        fail(where, "rates.range", spread, "a number > 1")
    check_int(
        where, "rates.steps", manifest_key(section, "steps", where, "rates."), 1, MAX_INNER_STEPS
    )
    layers = manifest_key(section, "layers", where, "rates.")
    ok = isinstance(layers, list) and all(isinstance(x, str) for x in layers)
    if not ok or not layers or len(set(layers)) != len(layers):
        fail(where, "rates.layers", layers, "a list of distinct layer names, at least one")
    for name in manifest["inner"]["adapted"]:
        if layer_of(name) not in layers:
            fail(where, "rates.layers", layers, f"a list that names {layer_of(name)!r} ({name})")


#: a taskrate bundle: ``policy.onnx``, ``adapt.onnx`` (with the rate network), ``params.npz``
TASKRATE_LAYOUT = BundleLayout(
    graphs={
        GRAPH_KEYS[POLICY_GRAPH]: POLICY_GRAPH_SPEC,
        GRAPH_KEYS[ADAPT_GRAPH]: GraphSpec(ADAPT_GRAPH, _adapt_io, _rates_probe),
    },
    arrays=(PARAMS_ARRAY,),
    sections=("discount", "inner", "parameters", RATES_OUTPUT),
    check_manifest=check_taskrate_manifest,
)


# ---------------------------------------------------------------------- the runtime


class TaskRateAdapter(GradientAdapter):
    """The gradient kind's runtime (same arguments, guard and state files) with the
    learning rates that ``adapt.onnx`` generates from the batch it steps on.

    ``rates``: the rates ``(steps, layers)`` of the last step taken (None before any). The
    rate network reads the batch the steps are taken on: the guard's training share of the
    buffer (every transition but the held-out ones, ``holdout_fraction``), as the steps
    themselves; torch's evaluation, which holds nothing out, generates them from the whole
    support.
    """

    layout = TASKRATE_LAYOUT

    def __init__(self, bundle: Bundle, **kwargs: Any) -> None:
        self.rates: np.ndarray | None = None
        self._rate_failure = ""
        super().__init__(bundle, **kwargs)
        self._adapt_outputs = [*self._adapt_outputs, RATES_OUTPUT]

    @classmethod
    def describe(cls, bundle: Bundle) -> list[tuple[str, str]]:
        """The gradient kind's rows and how the rates are generated."""
        section = bundle.manifest[RATES_OUTPUT]
        low, high = rate_bounds(bundle.manifest)
        rates = (
            f"generated by adapt.onnx from the support, one per layer ({len(section['layers'])}) "
            f"and step ({section['steps']}), in [{low:.3g}, {high:.3g}]"
        )
        return [*super().describe(bundle), ("rates", rates)]

    def _check_graphs(self) -> tuple[list[str], list[str]]:
        """The gradient kind's policy check; the adapt graph takes ``step``, no ``lr:``."""
        pol_in = [i.name for i in self._policy.get_inputs()]
        policy_params = param_inputs(
            pol_in, {OBS_INPUT}, self._meta, self.bundle.file(POLICY_GRAPH)
        )
        ad_in = [i.name for i in self._adapt.get_inputs()]
        ad_out = {o.name for o in self._adapt.get_outputs()}
        where = self.bundle.file(ADAPT_GRAPH)
        expected = {NEW_PREFIX + k for k in self.adapted} | {LOSS_OUTPUT, RATES_OUTPUT}
        if not expected <= ad_out or STEP_INPUT not in ad_in:
            raise BundleError(
                f"{where}: inputs {ad_in} / outputs {sorted(ad_out)} do not match the adapted "
                f"parameters {list(self.adapted)} of the manifest and the {STEP_INPUT!r} input"
            )
        adapt_params = param_inputs(
            ad_in, {*BATCH_INPUTS, GAMMA_INPUT, STEP_INPUT}, self._meta, where
        )
        return policy_params, adapt_params

    def step(
        self, params: dict[str, np.ndarray], batch: Transitions, index: int = 0
    ) -> tuple[dict[str, np.ndarray], float]:
        """One raw ``adapt.onnx`` step at the rates of row ``index`` (the last row beyond
        it); rates outside the declared bounds give non-finite parameters, so the guard
        refuses the step (the report names the rates)."""
        feeds: dict[str, Any] = {PARAM_PREFIX + k: params[k] for k in self._adapt_params}
        feeds.update(zip(BATCH_INPUTS, batch, strict=True))
        feeds[GAMMA_INPUT] = self._gamma
        feeds[STEP_INPUT] = np.asarray(index, np.int64)
        *new, loss, rates = self._adapt.run(self._adapt_outputs, feeds)
        self.rates = rates
        problem = rates_problem(rates, self.bundle.manifest)
        if problem:
            self._rate_failure = f"{problem} at step {index + 1}"
            new = [np.full_like(v, np.nan) for v in new]
        return dict(zip(self.adapted, new, strict=True)), float(loss)

    def loss(self, params: dict[str, np.ndarray], batch: Transitions) -> float:
        """The inner loss of ``params`` on ``batch``; the rates the graph generates for it on
        the way are not a step's, so ``rates`` and a rate failure are left as they were."""
        rates, failure = self.rates, self._rate_failure
        try:
            return super().loss(params, batch)
        finally:
            self.rates, self._rate_failure = rates, failure

    def adapt(self, steps: int | None = None, from_meta: bool | None = None) -> AdaptReport:
        """:meth:`GradientAdapter.adapt`; a step refused for its rates is named in the
        report's ``reason``."""
        self._rate_failure = ""
        report = super().adapt(steps, from_meta)
        if self._rate_failure and not report.accepted:
            report = dataclasses.replace(report, reason=self._rate_failure)
        return report
