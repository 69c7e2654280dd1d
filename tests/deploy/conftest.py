"""Bundles for the runtime tests, exported once per session from random-weight policies."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from robometa.deploy.bundle import LRS_FILE, MANIFEST_FILE, PARAMS_FILE, sha256_file


@dataclass(frozen=True)
class Built:
    """A policy and the bundle exported from it."""

    policy: object
    path: Path


def _build(tmp_path_factory: pytest.TempPathFactory, method: str, inner: str) -> Built:
    from robometa.bundle import export_bundle
    from robometa.testing import random_policy

    policy = random_policy(method, inner, hidden=(16, 16), seed=3)
    path = export_bundle(policy, tmp_path_factory.mktemp("bundles") / f"{method}-{inner}")
    return Built(policy, path)


@pytest.fixture(scope="session")
def cavia(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """CAVIA shape (a context vector adapts) with the td+model inner loss."""
    return _build(tmp_path_factory, "cavia", "td+model")


@pytest.fixture(scope="session")
def context(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A ``context`` bundle (encoder.onnx + policy.onnx) of a random-weight context policy."""
    from robometa.bundle import export_bundle
    from robometa.methods.context import untrained_policy

    policy = untrained_policy(seed=3, support_size=40)
    return Built(policy, export_bundle(policy, tmp_path_factory.mktemp("bundles") / "context"))


@pytest.fixture(scope="session")
def taskrate(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A ``taskrate`` bundle of a random-weight policy whose generated rates vary."""
    from robometa.bundle import export_bundle
    from robometa.methods.taskrate import untrained_policy

    policy = untrained_policy(seed=3, support_size=40)
    return Built(policy, export_bundle(policy, tmp_path_factory.mktemp("bundles") / "taskrate"))


@pytest.fixture(scope="session")
def cavia_encoder(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A ``cavia-encoder`` bundle of a random-weight policy (model inner loss)."""
    from robometa.bundle import export_bundle
    from robometa.methods.cavia_encoder import untrained_policy

    policy = untrained_policy(seed=3, support_size=40)
    path = export_bundle(policy, tmp_path_factory.mktemp("bundles") / "cavia-encoder")
    return Built(policy, path)


@pytest.fixture(scope="session")
def recurrent(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A ``recurrent`` bundle (policy.onnx + memory.onnx) of a random-weight recurrent policy."""
    from robometa.bundle import export_bundle
    from robometa.methods.recurrent import untrained_policy

    policy = untrained_policy(seed=3, support_size=40)
    path = export_bundle(policy, tmp_path_factory.mktemp("bundles") / "recurrent")
    return Built(policy, path)


@pytest.fixture(scope="session")
def finetune(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A DQN-shaped policy without learning rates: the bundle fine-tunes every parameter."""
    return _build(tmp_path_factory, "dqn", "td")


@pytest.fixture(scope="session")
def rma(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A ``history`` bundle (policy.onnx + history.onnx) of a random-weight rma policy."""
    from robometa.bundle import export_bundle
    from robometa.methods.rma import untrained_policy

    policy = untrained_policy(seed=3, support_size=40)
    return Built(policy, export_bundle(policy, tmp_path_factory.mktemp("bundles") / "rma"))


def rehash(bundle: Path) -> None:
    """Recompute the manifest's sha256 entries after a test edited files on purpose."""
    manifest_path = bundle / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    for name in manifest["files"]:
        manifest["files"][name] = {
            "sha256": sha256_file(bundle / name),
            "bytes": (bundle / name).stat().st_size,
        }
    manifest_path.write_text(json.dumps(manifest, indent=2))


@pytest.fixture
def edited_bundle(tmp_path: Path) -> Callable[..., Path]:
    """Copy a bundle, replace its learning rates / parameters / manifest keys, rehash it."""

    def edit(
        source: Path,
        lrs: dict[str, np.ndarray] | None = None,
        params: dict[str, np.ndarray] | None = None,
        manifest: dict | None = None,
    ) -> Path:
        out = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(source, out)
        if lrs is not None:
            np.savez(out / LRS_FILE, **lrs)
        if params is not None:
            np.savez(out / PARAMS_FILE, **params)
        rehash(out)
        if manifest:
            doc = json.loads((out / MANIFEST_FILE).read_text())
            doc.update(manifest)
            (out / MANIFEST_FILE).write_text(json.dumps(doc))
        return out

    return edit
