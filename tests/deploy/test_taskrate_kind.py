"""The ``taskrate`` and ``cavia-encoder`` bundle kinds end to end: the files and kind, the
runtime's parity with torch (Q-values 1e-5, steps 1e-4, generated rates and the encoder's
context 1e-5), the guard, ``run_rounds`` and ``robometa-deploy adapt``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from fake_robot import FakeCartPole
from robometa.deploy import Adapter
from robometa.deploy.bundle import MANIFEST_FILE, Bundle, BundleError
from robometa.deploy.cavia_encoder import CaviaEncoderAdapter
from robometa.deploy.cli import main as deploy_main
from robometa.deploy.loop import run_rounds
from robometa.deploy.taskrate import TaskRateAdapter

from robometa.adaptation import Batch, adapt_step
from robometa.methods.cavia_encoder import initial_context
from robometa.methods.taskrate import generated_rates, step_lrs
from robometa.networks import q_values

Q_TOLERANCE = 1e-5
STEP_TOLERANCE = 1e-4
RATE_TOLERANCE = 1e-5


def transitions(n: int, seed: int) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    obs = 0.05 * torch.randn(n, 4, generator=gen)
    return Batch(
        obs,
        torch.randint(0, 3, (n,), generator=gen),
        torch.ones(n),
        obs + 0.02 * torch.randn(n, 4, generator=gen),
        torch.zeros(n),
    )


def fill(adapter: Adapter, batch: Batch) -> None:
    for row in zip(*(f.numpy() for f in batch), strict=True):
        assert adapter.observe(*row)


def test_a_taskrate_bundle_holds_its_kinds_files(taskrate) -> None:
    manifest = json.loads((taskrate.path / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "taskrate" and manifest["algorithm"] == "taskrate"
    assert sorted(manifest["files"]) == ["adapt.onnx", "params.npz", "policy.onnx"]
    assert manifest["rates"] == {
        "base": pytest.approx(0.01),
        "range": 10.0,
        "steps": 3,
        "layers": ["body.0", "body.1", "q_head", "model_head"],
    }
    assert not any(k.startswith(("encoder.", "rate.")) for k in manifest["inner"]["adapted"])
    assert "step" in manifest["graphs"]["adapt"]["inputs"]
    assert manifest["graphs"]["adapt"]["outputs"][-1] == "rates"
    adapter = Adapter.load(taskrate.path)
    assert type(adapter) is TaskRateAdapter and adapter.from_meta


def test_after_adapt_the_rates_are_those_of_the_last_step_on_the_training_share(
    taskrate,
) -> None:
    """The guard's loss evaluations (held-out share) run the same graph: they must not
    overwrite the rates the steps used."""
    adapter = Adapter.load(taskrate.path, capacity=40)
    fill(adapter, transitions(40, seed=4))
    report = adapter.adapt(steps=2)
    assert report.steps == 2 and report.n_holdout > 0
    train, held = adapter.split(adapter.buffer.ordered())
    probe = Adapter.load(taskrate.path)
    probe.step(dict(probe.meta_params), train, index=1)
    assert np.abs(adapter.rates - probe.rates).max() <= RATE_TOLERANCE
    probe.step(dict(probe.meta_params), held, index=1)
    assert np.abs(adapter.rates - probe.rates).max() > 1e-6  # the held-out share's differ


def test_a_cavia_encoder_bundle_holds_its_kinds_files(cavia_encoder) -> None:
    manifest = json.loads((cavia_encoder.path / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "cavia-encoder" and manifest["inner"]["adapted"] == ["context"]
    assert sorted(manifest["files"]) == [
        "adapt.onnx",
        "encoder.onnx",
        "lrs.npz",
        "params.npz",
        "policy.onnx",
    ]
    assert manifest["encoder"]["dim"] == 3
    adapter = Adapter.load(cavia_encoder.path)
    assert type(adapter) is CaviaEncoderAdapter and adapter.from_meta


@pytest.mark.parametrize("n", [9, 40])
def test_taskrate_runtime_matches_torch_rates_steps_and_q_values(taskrate, n: int) -> None:
    policy = taskrate.policy
    adapter = Adapter.load(taskrate.path)
    batch = transitions(n, seed=n)
    data = tuple(f.numpy() for f in batch)
    obs = transitions(16, seed=99).obs
    with torch.no_grad():
        rates = generated_rates(policy.net, policy.params, policy.lrs, batch)
        q0 = q_values(policy.net, policy.params, obs).numpy()
    assert np.abs(adapter.q_values(obs.numpy()) - q0).max() <= Q_TOLERANCE
    torch_params, ort_params = dict(policy.params), dict(adapter.meta_params)
    for i in range(4):  # the 3 trained rows, then one past them (reuses the last)
        with torch.no_grad():
            lrs = step_lrs(policy.net, rates, list(policy.lrs), i, torch_params)
            torch_params, _ = adapt_step(policy.net, torch_params, lrs, batch, policy.inner)
        new, _ = adapter.step(ort_params, data, index=i)
        assert np.abs(adapter.rates - rates.numpy()).max() <= RATE_TOLERANCE
        for k, v in new.items():
            assert np.abs(v - torch_params[k].numpy()).max() <= STEP_TOLERANCE, (i, k)
        ort_params.update(new)
    # rows differ per layer and step: the rates really are generated, not one constant
    assert rates.std() > 1e-4


def test_taskrate_rates_depend_on_the_buffer(taskrate) -> None:
    adapter = Adapter.load(taskrate.path)
    rates = []
    for seed in (1, 2):
        batch = tuple(f.numpy() for f in transitions(20, seed=seed))
        adapter.step(dict(adapter.meta_params), batch)
        rates.append(adapter.rates.copy())
    assert np.abs(rates[0] - rates[1]).max() > 1e-6


def test_cavia_encoder_runtime_matches_torch_context_steps_and_q_values(cavia_encoder) -> None:
    policy = cavia_encoder.policy
    adapter = Adapter.load(
        cavia_encoder.path, holdout_fraction=0.0, max_update_norm=None, tolerance=float("inf")
    )
    batch = transitions(30, seed=5)
    fill(adapter, batch)
    report = adapter.adapt(3)
    assert report.accepted
    with torch.no_grad():
        params = initial_context(policy.net, policy.params, batch)
        z0 = params["context"].numpy()
        for _ in range(3):
            params, _ = adapt_step(policy.net, params, policy.lrs, batch, policy.inner)
        obs = transitions(16, seed=98).obs
        q = q_values(policy.net, params, obs).numpy()
    assert np.abs(adapter.encoded - z0).max() <= RATE_TOLERANCE
    assert np.abs(adapter.params["context"] - params["context"].numpy()).max() <= STEP_TOLERANCE
    assert np.abs(adapter.q_values(obs.numpy()) - q).max() <= 1e-4
    assert np.abs(adapter.params["context"] - z0).max() > 1e-6  # the steps moved it


def test_cavia_encoder_adapt_zero_steps_keeps_the_encoders_context(cavia_encoder) -> None:
    adapter = Adapter.load(cavia_encoder.path, holdout_fraction=0.0, tolerance=float("inf"))
    fill(adapter, transitions(20, seed=3))
    assert adapter.adapt(0).accepted
    assert np.array_equal(adapter.params["context"], adapter.encoded)
    assert np.abs(adapter.encoded).max() > 0
    adapter.reset()
    assert np.array_equal(adapter.params["context"], np.zeros(3, np.float32))


def test_taskrate_rates_outside_their_bounds_roll_back(taskrate, tmp_path) -> None:
    """A manifest that narrows the bounds below the graph's rates: the probe refuses the
    bundle, and a runtime that meets such rates refuses the step."""
    out = tmp_path / "narrow"
    shutil.copytree(taskrate.path, out)
    doc = json.loads((out / MANIFEST_FILE).read_text())
    doc["rates"]["range"] = 1.0001
    (out / MANIFEST_FILE).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=r"rates.*outside the manifest's rates bounds"):
        Bundle.load(out)
    adapter = Adapter.load(taskrate.path, tolerance=float("inf"))
    fill(adapter, transitions(30, seed=4))
    adapter.bundle.manifest["rates"]["range"] = 1.0001  # as if the graph misbehaved
    before = adapter.params
    report = adapter.adapt()
    assert not report.accepted and report.rolled_back
    assert "outside the manifest's rates bounds" in report.reason
    assert all(np.array_equal(before[k], adapter.params[k]) for k in before)


@pytest.mark.parametrize("name", ["taskrate", "cavia_encoder"])
def test_run_rounds_adapts_on_a_robot(request, name: str) -> None:
    built = request.getfixturevalue(name)
    adapter = Adapter.load(built.path, tolerance=float("inf"))
    results = run_rounds(adapter, FakeCartPole(), rounds=2, support=40, steps=2, seed=0)
    assert [r.round for r in results] == [0, 1, 2]
    assert all(r.report.accepted and r.report.n_transitions == 40 for r in results[1:])
    changed = [
        k for k in adapter.adapted if not np.array_equal(adapter.params[k], adapter.meta_params[k])
    ]
    assert changed


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("taskrate", "rates generated by adapt.onnx from the support"),
        ("cavia_encoder", "starts at the 3-d context encoder.onnx infers"),
    ],
)
def test_robometa_deploy_adapt_runs_the_bundle(request, capsys, name: str, says: str) -> None:
    built = request.getfixturevalue(name)
    capsys.readouterr()
    args = ["adapt", "--bundle", str(built.path), "--sample-test-task", "0", "--rounds", "1"]
    assert deploy_main([*args, "--support", "20", "--eval-episodes", "1"]) == 0
    out = capsys.readouterr().out
    assert says in out
    kind = "taskrate" if name == "taskrate" else "cavia-encoder"
    assert deploy_main(["info", "--bundle", str(built.path)]) == 0
    assert f"kind        {kind}" in capsys.readouterr().out.splitlines()
