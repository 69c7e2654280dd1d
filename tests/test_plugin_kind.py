"""A bundle kind defined here, in the test module, and added with one call on each side, with
no other file edited: the training side's family writes and checks it, the reader verifies it
by its layout, ``Adapter.load`` builds its runtime and ``robometa-deploy`` serves it.

The toy kind ``static`` is a policy that does not adapt on the device: ``policy.onnx`` and
``params.npz`` only, no adapt graph and no ``inner``/``discount`` sections. Its family is DQN
(:class:`robometa.methods.dqn.DQN`) with its own ``write_bundle`` and ``check_bundle``; its
runtime is an :class:`robometa.deploy.adapter.Adapter` whose ``adapt`` reports that a static
bundle does not adapt (the API stays the one every kind serves).
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from robometa.deploy import kinds
from robometa.deploy.adapter import Adapter
from robometa.deploy.bundle import (
    MANIFEST_FILE,
    OBS_INPUT,
    PARAM_PREFIX,
    PARAMS_ARRAY,
    PARAMS_FILE,
    POLICY_GRAPH,
    Q_OUTPUT,
    Bundle,
    BundleError,
    BundleLayout,
    check_parameters,
)
from robometa.deploy.cli import main as deploy_main
from robometa.deploy.gradient import POLICY_GRAPH_SPEC
from robometa.deploy.guard import AdaptReport
from robometa.deploy.kinds import register_kind
from robometa.deploy.sessions import PROVIDERS, open_session, param_inputs, session_options
from robometa.deploy.transitions import DEFAULT_CAPACITY, TransitionBuffer

import robometa.algorithms as algorithms
from robometa.bundle import export_bundle, finish_bundle, graph_entry, shared_manifest, stamp_graph
from robometa.cli import main as robometa_main
from robometa.export import export_policy_graph
from robometa.methods.dqn import DQN
from robometa.networks import q_values
from robometa.policy import Policy
from robometa.testing import random_policy

KIND = "static"
TOY = "toy-static"
BROKEN = "toy-static-broken"
Q_TOLERANCE = 1e-5


# ---------------------------------------------------------------------- the device side


def _check_static_manifest(manifest: Mapping[str, Any], where: Path, obs_dim: int) -> None:
    check_parameters(manifest, where)


#: ``policy.onnx`` (the gradient kind's policy graph) and ``params.npz``; the manifest section
#: ``parameters`` (shapes only: nothing adapts).
STATIC_LAYOUT = BundleLayout(
    graphs={"policy": POLICY_GRAPH_SPEC},
    arrays=(PARAMS_ARRAY,),
    sections=("parameters",),
    check_manifest=_check_static_manifest,
)


class StaticAdapter(Adapter):
    """Acts with the exported parameters; ``adapt`` never changes them."""

    layout = STATIC_LAYOUT

    def __init__(self, bundle: Bundle, *, capacity: int | None = None, threads: int = 1) -> None:
        self._set_bundle(bundle)
        self._meta = {k: np.array(v) for k, v in bundle.params.items()}
        for v in self._meta.values():
            v.flags.writeable = False
        self._policy = open_session(bundle, POLICY_GRAPH, session_options(threads), PROVIDERS)
        inputs = [i.name for i in self._policy.get_inputs()]
        where = bundle.file(POLICY_GRAPH)
        self._names = param_inputs(inputs, {OBS_INPUT}, self._meta, where)
        self.buffer = TransitionBuffer(capacity or DEFAULT_CAPACITY, self.obs_dim)

    def q_values(self, obs: Any) -> np.ndarray:
        array = np.asarray(obs)
        single = array.ndim == 1
        batch = self._checked_obs(array[None] if single else array, None, "obs")
        if not np.isfinite(batch).all():
            raise ValueError("observations must be finite float32 values")
        feeds = {PARAM_PREFIX + k: self._meta[k] for k in self._names}
        q = self._policy.run([Q_OUTPUT], {**feeds, OBS_INPUT: batch})[0]
        return q[0] if single else q

    def act(self, obs: Any) -> int:
        return int(np.argmax(self.q_values(self._checked_obs(obs, self._obs_shape, "obs"))))

    def adapt(self, steps: int | None = None, from_meta: bool | None = None) -> AdaptReport:
        n = len(self.buffer)
        return AdaptReport(
            steps=0,
            accepted=False,
            rolled_back=False,
            reason=f"a {KIND!r} bundle does not adapt: it acts with its exported parameters",
            loss_before=math.nan,
            loss_after=math.nan,
            train_loss_before=math.nan,
            train_loss_after=math.nan,
            n_transitions=n,
            n_train=0,
            n_holdout=0,
            n_rejected=sum(self._rejected.values()),
            rejected=dict(self._rejected),
            seconds=0.0,
        )

    @property
    def params(self) -> dict[str, np.ndarray]:
        return dict(self._meta)

    @property
    def meta_params(self) -> dict[str, np.ndarray]:
        return dict(self._meta)

    @contextlib.contextmanager
    def acting_with_meta(self) -> Iterator[StaticAdapter]:
        yield self

    def restore_params(self, params: Mapping[str, np.ndarray]) -> None:
        if any(not np.array_equal(params[k], self._meta[k]) for k in params):
            raise ValueError(f"a {KIND!r} bundle's parameters never change")

    def reset(self) -> None:
        self.buffer.clear()
        self._rejected.clear()

    def save_state(self, path: str | Path) -> Path:
        raise ValueError(f"a {KIND!r} bundle has no adapted state to save")

    def load_state(self, path: str | Path) -> None:
        raise ValueError(f"a {KIND!r} bundle has no adapted state to load")


# ---------------------------------------------------------------------- the training side


class StaticDQN(DQN):
    """DQN whose bundle is the ``static`` kind, checked against torch by its own parity check."""

    checked: ClassVar[list[Path]] = []

    @classmethod
    def write_bundle(cls, policy: Policy, root: Path, run_dir: Path | None) -> None:
        params = {k: v.detach().float() for k, v in policy.params.items()}
        manifest = shared_manifest(policy, KIND)
        manifest["parameters"] = {k: {"shape": list(v.shape)} for k, v in params.items()}
        export_policy_graph(policy.net, params, root / POLICY_GRAPH)
        np.savez(root / PARAMS_FILE, **{k: v.numpy() for k, v in params.items()})
        stamp_graph(root / POLICY_GRAPH, manifest, "toy static policy: obs -> Q-values, action")
        manifest["graphs"] = {"policy": graph_entry(root / POLICY_GRAPH)}
        finish_bundle(root, manifest, run_dir)

    @classmethod
    def check_bundle(cls, policy: Policy, bundle_dir: Path) -> dict[str, float]:
        cls.checked.append(Path(bundle_dir))
        adapter = Adapter.load(bundle_dir)
        obs = sample_obs(policy, 11)
        with torch.no_grad():
            q_torch = q_values(policy.net, policy.params, torch.from_numpy(obs)).numpy()
        q_err = float(np.abs(adapter.q_values(obs) - q_torch).max())
        if q_err > Q_TOLERANCE:
            raise AssertionError(f"{bundle_dir}: Q-values differ from torch by {q_err}")
        return {"q_values": q_err}


class MidwayFailure(RuntimeError):
    pass


class BrokenStaticDQN(StaticDQN):
    """A family whose ``write_bundle`` fails after writing a file of its kind."""

    @classmethod
    def write_bundle(cls, policy: Policy, root: Path, run_dir: Path | None) -> None:
        export_policy_graph(policy.net, dict(policy.params), root / POLICY_GRAPH)
        (root / "encoder.onnx").write_bytes(b"half an encoder")
        (root / "scratch").mkdir()
        (root / "scratch" / "part.bin").write_bytes(b"\0" * 16)
        raise MidwayFailure("the encoder could not be traced")


def sample_obs(policy: Policy, n: int, seed: int = 0) -> np.ndarray:
    net = policy.net
    gen = torch.Generator().manual_seed(seed)
    return (net.obs_mean + net.obs_std * torch.randn(n, net.spec.obs_dim, generator=gen)).numpy()


@pytest.fixture
def static_kind(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Both sides registered with one call each; the registries restored afterwards."""
    monkeypatch.setattr(kinds, "KINDS", dict(kinds.KINDS))
    register_kind(KIND, f"{__name__}:StaticAdapter")
    algorithms.register(TOY, f"{__name__}:StaticDQN", family="dqn", bundle_kind=KIND)
    algorithms.register(BROKEN, f"{__name__}:BrokenStaticDQN", family="dqn", bundle_kind=KIND)
    StaticDQN.checked.clear()
    try:
        yield
    finally:
        algorithms.unregister(TOY)
        algorithms.unregister(BROKEN)


def static_policy(algorithm: str = TOY) -> Policy:
    policy = random_policy("dqn", hidden=(16, 16), seed=5)
    policy.algorithm = algorithm
    return policy


# ---------------------------------------------------------------------- the tests


def test_a_kind_added_with_one_call_each_side_exports_loads_acts_and_is_described(
    static_kind: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = static_policy()
    out = tmp_path / "bundle"
    assert export_bundle(policy, out) == out
    assert StaticDQN.checked and StaticDQN.checked[0].parent == tmp_path  # verified before the swap
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]

    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["kind"] == KIND and manifest["algorithm"] == TOY
    assert sorted(manifest["files"]) == [PARAMS_FILE, POLICY_GRAPH]
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE, PARAMS_FILE, POLICY_GRAPH]
    assert not {"inner", "discount", "network"} & set(manifest)
    assert list(manifest["graphs"]) == ["policy"]

    bundle = Bundle.load(out)
    assert bundle.kind == KIND and bundle.layout is STATIC_LAYOUT
    assert sorted(bundle.params) == sorted(policy.params)
    assert bundle.lrs == {} and bundle.adapted == ()
    with pytest.raises(BundleError, match=r"a 'static' bundle has no discount"):
        _ = bundle.discount

    adapter = Adapter.load(out)
    assert type(adapter) is StaticAdapter
    assert adapter.from_meta is False and adapter.support_epsilon == 0.3
    assert adapter.support_size == DEFAULT_CAPACITY
    obs = sample_obs(policy, 20, seed=1)
    with torch.no_grad():
        greedy = q_values(policy.net, policy.params, torch.from_numpy(obs)).argmax(1).tolist()
    assert [adapter.act(o) for o in obs] == greedy
    assert adapter.observe(obs[0], 1, 1.0, obs[1], False)
    report = adapter.adapt()
    assert not report.accepted and "does not adapt" in report.reason
    assert report.n_transitions == 1

    capsys.readouterr()
    assert deploy_main(["info", "--bundle", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "kind        static" in lines
    assert lines[0].startswith("bundle      ") and lines[1] == "kind        static"
    assert (
        "verified    files and hashes, manifest, arrays; graphs load, inputs/outputs match" in lines
    )
    assert not [line for line in lines if line.startswith(("inner loop", "discount"))]


def test_robometa_export_verifies_through_the_family(static_kind: None, tmp_path: Path) -> None:
    run = tmp_path / "run"
    static_policy().save(run)
    out = tmp_path / "bundle"
    assert robometa_main(["export", str(run), "--out", str(out)]) == 0
    assert len(StaticDQN.checked) == 1
    assert Bundle.load(out).kind == KIND


def test_the_info_of_a_gradient_bundle_names_its_kind_and_inner_loop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = random_policy("cavia", hidden=(16, 16), seed=2)
    out = export_bundle(policy, tmp_path / "bundle")
    capsys.readouterr()
    assert deploy_main(["info", "--bundle", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "kind        gradient"
    (loop,) = [line for line in lines if line.startswith("inner loop  ")]
    assert loop.endswith("adapts context")
    assert lines[-1] == f"discount    {policy.inner.gamma}"


def test_the_gradient_guard_flags_are_refused_for_a_kind_without_them(
    static_kind: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = export_bundle(static_policy(), tmp_path / "bundle")
    capsys.readouterr()
    for flag, value in (("--tolerance", "0.5"), ("--holdout-fraction", "0.1")):
        args = ["adapt", "--bundle", str(out), "--sample-test-task", "0", flag, value]
        assert deploy_main(args) == 2
        err = capsys.readouterr().err
        assert f"{flag}: a 'static' bundle's runtime (StaticAdapter) has no adaptation guard" in err


def test_the_adaptation_loop_runs_a_kind_that_does_not_adapt(
    static_kind: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = export_bundle(static_policy(), tmp_path / "bundle")
    capsys.readouterr()
    args = ["adapt", "--bundle", str(out), "--sample-test-task", "0", "--rounds", "1"]
    args += ["--support", "20", "--eval-episodes", "1"]
    assert deploy_main(args) == 0
    text = capsys.readouterr().out
    assert "a static bundle" in text and "round 1: a 'static' bundle does not adapt" in text


def test_a_write_bundle_failing_midway_leaves_no_temporary_directory_and_no_target(
    static_kind: None, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "kept ...: robometa did not write" for its own files
        with pytest.raises(MidwayFailure, match="could not be traced"):
            export_bundle(static_policy(BROKEN), out)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_overwrite_keeps_the_users_bundle(static_kind: None, tmp_path: Path) -> None:
    out = export_bundle(static_policy(), tmp_path / "bundle")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    mtime = out.stat().st_mtime_ns
    with pytest.raises(MidwayFailure):
        export_bundle(static_policy(BROKEN), out, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert out.stat().st_mtime_ns == mtime
    assert type(Adapter.load(out)) is StaticAdapter


def test_a_kind_without_its_family_check_is_refused_before_anything_is_written(
    static_kind: None, tmp_path: Path
) -> None:
    """The default ``check_bundle`` checks gradient bundles only."""

    class Unchecked(StaticDQN):
        check_bundle = classmethod(DQN.check_bundle.__func__)  # type: ignore[attr-defined]

    globals()["Unchecked"] = Unchecked
    algorithms.register("toy-unchecked", f"{__name__}:Unchecked", family="dqn", bundle_kind=KIND)
    try:
        with pytest.raises(ValueError, match=r"bundle kind 'static', which has no parity check"):
            export_bundle(static_policy("toy-unchecked"), tmp_path / "bundle")
        assert list(tmp_path.iterdir()) == []
        out = export_bundle(static_policy("toy-unchecked"), tmp_path / "bundle", verify=False)
        assert Bundle.load(out).kind == KIND
    finally:
        algorithms.unregister("toy-unchecked")
        globals().pop("Unchecked", None)
