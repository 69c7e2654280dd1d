"""Exported bundles: valid ONNX, parity with torch, a manifest that says what the bundle holds."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from robometa.deploy.bundle import (
    ADAPT_GRAPH,
    CONFIG_FILE,
    FORMAT_VERSION,
    LRS_FILE,
    MANIFEST_FILE,
    PARAMS_FILE,
    POLICY_GRAPH,
    Bundle,
    sha256_file,
)
from robometa.deploy.cli import main as deploy_main

import robometa.algorithms as algorithms
import robometa.bundle as writer
from robometa import __version__
from robometa.adaptation import INNER_LOSSES, Batch, adapt
from robometa.bundle import export_bundle
from robometa.bundle_gradient import adaptation_of, check_parity
from robometa.cli import add_export_command
from robometa.export import export_adapt_graph
from robometa.methods.dqn import DQN
from robometa.networks import NetworkSpec, QNetwork, q_values
from robometa.policy import Policy
from robometa.testing import RANDOM_POLICY_METHODS, random_policy

ENV_ID = "robometa/CartPole-v0"
#: one bundle per kind of learning rates; together they cover every inner loss and the oracle.
CASES: dict[str, tuple[str, str, bool]] = {
    "maml-td": ("maml", "td", False),
    "anil-td": ("anil", "td", False),
    "cavia-td+model": ("cavia", "td+model", False),
    "metasgd-model": ("metasgd", "model", False),
    "oracle-finetune": ("dqn", "td", True),
}
CONFIG_YAML = "algorithm: cavia\nseed: 7\n"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Policy, Path]]:
    """Export each case once, through the run-directory contract (RUN_DIR/policy.pt)."""
    cache: dict[str, tuple[Policy, Path]] = {}
    root = tmp_path_factory.mktemp("export")

    def get(case: str) -> tuple[Policy, Path]:
        if case not in cache:
            method, inner, privileged = CASES[case]
            policy = random_policy(method, inner, hidden=(16, 16), privileged=privileged, seed=7)
            if method == "dqn":
                policy.config["adaptation"] = {"fine_tune_lr": 0.005}  # as the trainer nests it
            run, out = root / "runs" / case, root / "bundles" / case
            policy.save(run)
            if case == "cavia-td+model":
                # This one goes through `robometa export RUN_DIR --out BUNDLE_DIR`.
                (run / CONFIG_FILE).write_text(CONFIG_YAML)
                parser = argparse.ArgumentParser()
                add_export_command(parser.add_subparsers())
                args = parser.parse_args(["export", str(run), "--out", str(out)])
                assert args.func(args) == 0
            else:
                export_bundle(run, out)
            cache[case] = (Policy.load(run), out)
        return cache[case]

    return get


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest, exported) -> tuple[Policy, Path]:
    return exported(request.param)


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def random_batch(policy: Policy, n: int, seed: int) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    net = policy.net
    obs = net.obs_mean + net.obs_std * torch.randn(n, net.spec.obs_dim, generator=gen)
    return Batch(
        obs,
        torch.randint(0, net.spec.n_actions, (n,), generator=gen),
        torch.randn(n, generator=gen),
        obs + 0.2 * net.obs_std * torch.randn(n, net.spec.obs_dim, generator=gen),
        (torch.rand(n, generator=gen) < 0.2).float(),
    )


def ort_adapt(path: Path, params, lrs, batch: Batch, gamma: float, steps: int):
    """``steps`` runs of adapt.onnx, feeding each step's new parameters into the next."""
    sess = session(path)
    current = {k: v.numpy().copy() for k, v in params.items()}
    data = {
        "obs": batch.obs.numpy(),
        "action": batch.action.numpy(),
        "reward": batch.reward.numpy(),
        "next_obs": batch.next_obs.numpy(),
        "terminated": batch.terminated.numpy(),
        "gamma": np.asarray(gamma, np.float32),
    }
    out_names = [o.name for o in sess.get_outputs()]
    losses = []
    for _ in range(steps):
        feeds = {}
        for i in sess.get_inputs():
            kind, _, name = i.name.partition(":")
            feeds[i.name] = {"param": current, "lr": lrs}[kind][name] if name else data[kind]
        outputs = dict(zip(out_names, sess.run(None, feeds), strict=True))
        losses.append(float(outputs.pop("loss")))
        current.update({k.removeprefix("new:"): v for k, v in outputs.items()})
    return current, losses


class TestGraphs:
    def test_pass_the_full_onnx_checker_and_carry_metadata(self, case) -> None:
        policy, path = case
        for name in (POLICY_GRAPH, ADAPT_GRAPH):
            onnx.checker.check_model(str(path / name), full_check=True)
            props = {p.key: p.value for p in onnx.load(str(path / name)).metadata_props}
            assert props["robometa.format_version"] == str(FORMAT_VERSION)
            assert props["robometa.env_id"] == ENV_ID
            assert props["robometa.algorithm"] == policy.algorithm
            assert props["robometa.graph"] == name

    def test_inputs_and_outputs_are_named(self, case) -> None:
        policy, path = case
        lrs, _, _ = adaptation_of(policy)
        pol = session(path / POLICY_GRAPH)
        q_params = [k for k in policy.params if not k.startswith("model_head.")]
        assert [i.name for i in pol.get_inputs()] == ["obs"] + [f"param:{k}" for k in q_params]
        assert [o.name for o in pol.get_outputs()] == ["q_values", "action"]
        ad = session(path / ADAPT_GRAPH)
        assert [i.name for i in ad.get_inputs()] == (
            [f"param:{k}" for k in policy.params]
            + [f"lr:{k}" for k in lrs]
            + ["obs", "action", "reward", "next_obs", "terminated", "gamma"]
        )
        # Only the adapted parameters come out: the others pass through unchanged.
        assert [o.name for o in ad.get_outputs()] == [f"new:{k}" for k in lrs] + ["loss"]


class TestParity:
    @pytest.mark.parametrize("batch", [1, 2, 33, 256])
    def test_q_values_and_greedy_actions_match_torch(self, case, batch: int) -> None:
        policy, path = case
        obs = random_batch(policy, batch, seed=batch).obs
        with torch.no_grad():
            expected = q_values(policy.net, policy.params, obs).numpy()
        feeds = {"obs": obs.numpy()}
        feeds |= {f"param:{k}": v.numpy() for k, v in policy.params.items()}
        sess = session(path / POLICY_GRAPH)
        feeds = {i.name: feeds[i.name] for i in sess.get_inputs()}
        q, action = sess.run(None, feeds)
        np.testing.assert_allclose(q, expected, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(action, expected.argmax(axis=1))
        assert action.dtype == np.int64 and q.dtype == np.float32

    @pytest.mark.parametrize("batch", [1, 7, 64])
    def test_parameters_after_k_steps_match_torch(self, case, batch: int) -> None:
        policy, path = case
        lrs, inner, _ = adaptation_of(policy)
        data = random_batch(policy, batch, seed=100 + batch)
        with torch.no_grad():
            expected, expected_losses = adapt(policy.net, policy.params, lrs, data, inner, 3)
        bundle_lrs = Bundle.load(path).lrs
        got, losses = ort_adapt(path / ADAPT_GRAPH, policy.params, bundle_lrs, data, inner.gamma, 3)
        for k, v in expected.items():
            np.testing.assert_allclose(got[k], v.numpy(), atol=1e-4, rtol=0, err_msg=k)
        np.testing.assert_allclose(losses, expected_losses, atol=1e-4, rtol=1e-5)
        changed = [k for k in lrs if not np.array_equal(got[k], policy.params[k].numpy())]
        assert changed, "adaptation changed nothing: the parity check would be vacuous"

    def test_check_parity_reports_tiny_errors(self, case) -> None:
        policy, path = case
        errors = check_parity(policy, path, seed=3)
        assert errors["q_values"] <= 1e-5 and errors["adapted_params"] <= 1e-4

    def test_check_parity_catches_a_different_policy(self, exported) -> None:
        _, path = exported("maml-td")
        other = random_policy("maml", "td", hidden=(16, 16), seed=99)
        with pytest.raises(AssertionError, match="differ from torch"):
            check_parity(other, path)


class TestManifest:
    def test_describes_the_policy(self, case) -> None:
        policy, path = case
        m = json.loads((path / MANIFEST_FILE).read_text())
        lrs, inner, fine_tune = adaptation_of(policy)
        assert m["format_version"] == FORMAT_VERSION
        assert (m["env_id"], m["algorithm"]) == (ENV_ID, policy.algorithm)
        assert m["privileged"] is policy.privileged
        assert m["action"] == {"n": 3, "names": ["push_left", "none", "push_right"]}
        assert m["discount"] == pytest.approx(policy.inner.gamma)
        assert m["inner"]["kind"] == inner.kind
        assert m["inner"]["adapted"] == list(lrs)
        assert m["inner"]["fine_tune"] is fine_tune
        assert m["inner"]["from_meta"] is (not fine_tune)
        assert m["inner"]["steps"] == policy.adapt_steps
        assert m["inner"]["support_size"] == policy.support_size
        assert m["config"] == policy.config
        assert set(m["producer"]) >= {"robometa", "torch", "onnx", "onnxruntime"}
        assert m["producer"]["robometa"] == __version__
        env = gym.make(ENV_ID)
        assert m["dynamics"]["params"] == env.unwrapped.dynamics_space.to_json()
        env.close()
        for k, v in policy.params.items():
            assert m["parameters"][k] == {"shape": list(v.shape), "adapted": k in lrs}
        np.testing.assert_allclose(m["normalization"]["obs_std"], policy.net.obs_std.numpy())

    def test_observation_space_with_names(self, case) -> None:
        policy, path = case
        obs = json.loads((path / MANIFEST_FILE).read_text())["observation"]
        names = ["cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity"]
        assert obs["names"][:4] == names and obs["shape"] == [policy.net.spec.obs_dim]
        assert obs["high"][:4] == pytest.approx([4.8, 20.0, np.pi, 50.0])
        assert obs["low"][:4] == pytest.approx([-4.8, -20.0, -np.pi, -50.0])
        if policy.privileged:
            assert obs["names"][4:] == [f"dynamics:{n}" for n in json_dynamics_names(path)]
            assert obs["low"][4:] == [None] * 10 and obs["high"][4:] == [None] * 10
        else:
            assert len(obs["names"]) == 4

    def test_every_file_is_hashed(self, case) -> None:
        _, path = case
        files = json.loads((path / MANIFEST_FILE).read_text())["files"]
        expected = {f.name for f in path.iterdir()} - {MANIFEST_FILE}
        assert set(files) == expected >= {POLICY_GRAPH, ADAPT_GRAPH, PARAMS_FILE, LRS_FILE}
        for name, entry in files.items():
            assert entry == {
                "sha256": sha256_file(path / name),
                "bytes": (path / name).stat().st_size,
            }

    def test_meta_parameters_and_learning_rates_as_plain_arrays(self, case) -> None:
        policy, path = case
        lrs, _, _ = adaptation_of(policy)
        with np.load(path / PARAMS_FILE) as npz:
            assert set(npz.files) == set(policy.params)
            for k, v in policy.params.items():
                np.testing.assert_array_equal(npz[k], v.numpy())
        with np.load(path / LRS_FILE) as npz:
            assert list(npz.files) == list(lrs)
            for k, v in lrs.items():
                np.testing.assert_array_equal(npz[k], v.numpy())
                assert npz[k].shape in ((), tuple(policy.params[k].shape))


def json_dynamics_names(path: Path) -> list[str]:
    return [p["name"] for p in json.loads((path / MANIFEST_FILE).read_text())["dynamics"]["params"]]


class TestMethods:
    def test_meta_sgd_exports_its_per_parameter_rates(self, exported) -> None:
        policy, path = exported("metasgd-model")
        lrs = Bundle.load(path).lrs
        for k, v in policy.lrs.items():
            assert lrs[k].shape == tuple(v.shape)
        lr_info = json.loads((path / MANIFEST_FILE).read_text())["inner"]["lr"]["q_head.weight"]
        assert lr_info["per_parameter"] is True and lr_info["shape"] == [3, 16]

    def test_anil_adapts_the_two_heads_only(self, exported) -> None:
        # the heads ANIL training adapts (robometa.methods.gradient.adapted_names)
        _, path = exported("anil-td")
        heads = ("q_head.weight", "q_head.bias", "model_head.weight", "model_head.bias")
        assert Bundle.load(path).adapted == heads

    def test_a_method_without_adaptation_exports_fine_tuning(self, exported) -> None:
        policy, path = exported("oracle-finetune")
        bundle = Bundle.load(path)
        assert policy.lrs == {}
        assert set(bundle.adapted) == set(policy.params)
        assert all(float(v) == pytest.approx(0.005) for v in bundle.lrs.values())
        inner = bundle.manifest["inner"]
        assert inner["fine_tune"] is True and inner["kind"] == "td"
        assert inner["from_meta"] is False  # fine-tuning continues from where it is
        assert bundle.manifest["privileged"] is True

    def test_run_config_is_copied(self, exported) -> None:
        _, path = exported("cavia-td+model")
        assert (path / CONFIG_FILE).read_text() == CONFIG_YAML
        assert json.loads((path / MANIFEST_FILE).read_text())["files"][CONFIG_FILE]

    def test_oracle_bundle_adapts_in_the_deploy_cli(self, exported, capsys) -> None:
        _, path = exported("oracle-finetune")
        args = ["adapt", "--bundle", str(path), "--sample-test-task", "2", "--rounds", "1"]
        assert deploy_main([*args, "--support", "20", "--steps", "1", "--eval-episodes", "1"]) == 0
        out = capsys.readouterr().out
        rows = [line.split()[0] for line in out.splitlines() if line[:5].strip().isdigit()]
        assert rows == ["0", "1"]


class TestExportErrors:
    def test_refuses_to_overwrite_something_that_is_not_a_bundle(self, tmp_path: Path) -> None:
        out = tmp_path / "precious"
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
        with pytest.raises(FileExistsError, match="not a robometa bundle"):
            export_bundle(random_policy("cavia"), out, overwrite=True)
        assert (out / "notes.txt").read_text() == "keep me"

    def test_network_that_does_not_fit_the_env(self, tmp_path: Path) -> None:
        policy = random_policy("cavia")
        policy.net = QNetwork(NetworkSpec(5, 3, (8,)))
        policy.params = policy.net.params()
        policy.lrs = {}
        with pytest.raises(ValueError, match="obs_dim=5"):
            export_bundle(policy, tmp_path / "b")
        assert not (tmp_path / "b").exists()
        assert list(tmp_path.iterdir()) == []

    def test_missing_run(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match="no trained policy"):
            export_bundle(tmp_path / "run", tmp_path / "b")

    def test_reexport_replaces_the_bundle_in_one_move(self, tmp_path: Path, monkeypatch) -> None:
        calls = []

        def fake_write(policy, root: Path, run_dir) -> None:
            calls.append(root)
            manifest = {"format_version": 1, "files": {}, "producer": {"robometa": __version__}}
            (root / MANIFEST_FILE).write_text(json.dumps({**manifest, "n": len(calls)}))

        monkeypatch.setattr(writer, "_write", fake_write)
        out = tmp_path / "bundle"
        export_bundle(random_policy("cavia"), out, verify=False)
        with pytest.raises(FileExistsError, match="pass --overwrite"):
            export_bundle(random_policy("cavia"), out, verify=False)
        export_bundle(random_policy("cavia"), out, verify=False, overwrite=True)
        assert len(calls) == 2  # the refused export wrote nothing
        assert json.loads((out / MANIFEST_FILE).read_text())["n"] == 2
        assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


#: the manifest's keys in the order an export writes them (``kind`` is the only new one)
MANIFEST_KEYS = [
    "format_version",
    "kind",
    "env_id",
    "algorithm",
    "privileged",
    "observation",
    "action",
    "discount",
    "normalization",
    "network",
    "inner",
    "parameters",
    "dynamics",
    "config",
    "producer",
    "graphs",
    "files",
]


class TestKind:
    def test_manifest_and_graphs_name_the_gradient_kind(self, case) -> None:
        policy, path = case
        m = json.loads((path / MANIFEST_FILE).read_text())
        assert m["kind"] == "gradient" == algorithms.get(policy.algorithm).bundle_kind
        assert list(m) == MANIFEST_KEYS
        for name in (POLICY_GRAPH, ADAPT_GRAPH):
            props = {p.key: p.value for p in onnx.load(str(path / name)).metadata_props}
            assert props["robometa.kind"] == "gradient"


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("robometa.export", ("robometa.bundle", "robometa.bundle_gradient", "robometa.cli")),
        ("robometa.bundle", ("robometa.export", "robometa.bundle_gradient", "robometa.cli")),
        ("robometa.cli", ("robometa.export", "robometa.bundle", "robometa.bundle_gradient")),
    ],
)
def test_the_tracer_and_the_writer_do_not_import_each_other(module: str, absent) -> None:
    """export.py traces, bundle.py writes: neither imports the other (nor the CLI) at import."""
    code = f"import sys, {module}; print(sorted(m for m in {list(absent)!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


class RecordingDQN(DQN):
    """DQN whose bundle is the default one, written through an override that records the call."""

    calls: ClassVar[list[tuple[str, Path, Any]]] = []

    @classmethod
    def write_bundle(cls, policy: Policy, root: Path, run_dir: Path | None) -> None:
        cls.calls.append((policy.algorithm, root, run_dir))
        super().write_bundle(policy, root, run_dir)


class ManifestlessDQN(DQN):
    """A broken family: its bundle has a file but no manifest."""

    @classmethod
    def write_bundle(cls, policy: Policy, root: Path, run_dir: Path | None) -> None:
        (root / PARAMS_FILE).write_bytes(b"not a bundle")


class UnlistingDQN(DQN):
    """A broken family: a gradient bundle, then files its manifest does not list."""

    @classmethod
    def write_bundle(cls, policy: Policy, root: Path, run_dir: Path | None) -> None:
        super().write_bundle(policy, root, run_dir)
        (root / "encoder.onnx").write_bytes(b"an unlisted graph")
        (root / "cache").mkdir()
        (root / "cache" / "blob").write_bytes(b"\0")


class CheckingDQN(DQN):
    """DQN with its own parity check (which fails): the family's check is what runs."""

    @classmethod
    def check_bundle(cls, policy: Policy, bundle_dir: Path) -> Any:
        raise AssertionError(f"{bundle_dir}: the family's own check ran")


@contextlib.contextmanager
def registered(name: str, cls: type, **kwargs: Any) -> Iterator[None]:
    algorithms.register(name, f"{__name__}:{cls.__name__}", family="dqn", replace=True, **kwargs)
    try:
        yield
    finally:
        algorithms.unregister(name)


class TestFamilyExport:
    def test_an_unregistered_algorithm_is_refused_before_anything_is_written(
        self, tmp_path: Path
    ) -> None:
        policy = random_policy("cavia")
        policy.algorithm = "no-such-method"
        with pytest.raises(ValueError, match="unknown algorithm 'no-such-method'"):
            export_bundle(policy, tmp_path / "out" / "bundle")
        assert list(tmp_path.iterdir()) == []

    def test_export_calls_the_familys_write_bundle(self, tmp_path: Path) -> None:
        RecordingDQN.calls.clear()
        policy = random_policy("dqn", hidden=(16, 16), seed=3)
        policy.algorithm = "toy-recording"
        out = tmp_path / "bundle"
        with registered("toy-recording", RecordingDQN):
            export_bundle(policy, out)  # verified: the parity check of the gradient kind
        [(algorithm, root, run_dir)] = RecordingDQN.calls
        assert algorithm == "toy-recording" and run_dir is None
        assert root.parent == tmp_path and root != out  # the temp directory, swapped in
        m = Bundle.load(out).manifest
        assert (m["algorithm"], m["kind"]) == ("toy-recording", "gradient")
        assert [p.name for p in tmp_path.iterdir()] == ["bundle"]

    def test_a_family_that_writes_no_manifest_is_refused_and_cleaned_up(
        self, tmp_path: Path
    ) -> None:
        policy = random_policy("dqn")
        policy.algorithm = "toy-broken"
        with (
            registered("toy-broken", ManifestlessDQN),
            pytest.raises(ValueError, match="'toy-broken'.*wrote no robometa manifest.json"),
        ):
            export_bundle(policy, tmp_path / "bundle", verify=False)
        assert list(tmp_path.iterdir()) == []

    def test_what_a_failed_family_wrote_is_removed_with_its_temporary_directory(
        self, tmp_path: Path, recwarn: pytest.WarningsRecorder
    ) -> None:
        policy = random_policy("dqn", hidden=(16, 16))
        policy.algorithm = "toy-unlisting"
        with (
            registered("toy-unlisting", UnlistingDQN),
            pytest.raises(ValueError, match=r"wrote cache, encoder.onnx without listing them"),
        ):
            export_bundle(policy, tmp_path / "bundle", verify=False)
        assert list(tmp_path.iterdir()) == []
        assert [str(w.message) for w in recwarn] == []  # nothing "kept": all of it was its own

    def test_the_familys_own_parity_check_runs(self, tmp_path: Path) -> None:
        policy = random_policy("dqn", hidden=(16, 16))
        policy.algorithm = "toy-checking"
        with (
            registered("toy-checking", CheckingDQN),
            pytest.raises(AssertionError, match=r"robometa-new-.*: the family's own check ran"),
        ):
            export_bundle(policy, tmp_path / "bundle")
        assert list(tmp_path.iterdir()) == []

    def test_a_kind_without_a_parity_check_needs_no_verify(self, tmp_path: Path) -> None:
        policy = random_policy("dqn")
        policy.algorithm = "toy-other"
        with (
            registered("toy-other", RecordingDQN, bundle_kind="other"),
            pytest.raises(ValueError, match="bundle kind 'other', which has no parity check"),
        ):
            export_bundle(policy, tmp_path / "bundle")
        assert list(tmp_path.iterdir()) == []


COVERED = {(m, i) for m, i, _ in CASES.values()}
REST = [
    (m, i)
    for m, i in itertools.product(RANDOM_POLICY_METHODS, INNER_LOSSES)
    if (m, i) not in COVERED and m != "dqn"  # without learning rates the bundle fine-tunes with td
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "inner"), REST, ids=[f"{m}-{i}" for m, i in REST])
def test_every_method_and_inner_loss_adapts_like_torch(
    method: str, inner: str, tmp_path: Path
) -> None:
    policy = random_policy(method, inner, hidden=(16, 16), seed=11)
    path = export_adapt_graph(
        policy.net, policy.params, policy.lrs, policy.inner, tmp_path / ADAPT_GRAPH
    )
    onnx.checker.check_model(str(path), full_check=True)
    data = random_batch(policy, 19, seed=5)
    with torch.no_grad():
        expected, _ = adapt(policy.net, policy.params, policy.lrs, data, policy.inner, 3)
    lrs = {k: v.numpy() for k, v in policy.lrs.items()}
    got, _ = ort_adapt(path, policy.params, lrs, data, policy.inner.gamma, 3)
    for k, v in expected.items():
        np.testing.assert_allclose(got[k], v.numpy(), atol=1e-4, rtol=0, err_msg=k)
