"""The bundle format, writer side: ``export_bundle(run_dir or policy, out_dir)``.

The layout, file names, graph input/output names and the format version are defined once in
:mod:`robometa.deploy.bundle` (the reader); this module fills them in from a trained
:class:`~robometa.policy.Policy` and verifies the result with that same reader.

``manifest.json`` keys:

| key | content |
|---|---|
| ``format_version`` | layout version (readers refuse others) |
| ``env_id``, ``algorithm``, ``privileged`` | the robot family, the method, whether the observation carries the true dynamics (oracle) |
| ``observation`` | ``shape``, ``dtype``, ``low``, ``high`` (``null`` = unbounded), ``names``; for a privileged policy the normalized dynamics parameters are appended as ``dynamics:<name>`` |
| ``action`` | ``n`` and ``names`` of the discrete actions |
| ``discount`` | the ``gamma`` fed to ``adapt.onnx`` |
| ``normalization`` | ``obs_mean``, ``obs_std``, ``delta_std`` (already inside the graphs; informational) |
| ``network`` | the network spec (hidden sizes, context size, activation) |
| ``inner`` | ``kind`` (td, model, td+model), ``huber_delta``, ``model_weight``, ``steps``, ``support_size``, ``adapted`` (parameter names), ``lr`` (per adapted parameter: a number, or ``{per_parameter, shape, min, max, mean}`` for Meta-SGD), ``fine_tune`` (true when the policy had no learning rates and the export added plain fine-tuning), ``from_meta`` (true: every ``adapt`` starts from the meta-parameters, as in meta-training) |
| ``parameters`` | name -> ``shape``, ``adapted`` |
| ``graphs`` | per graph: file, inputs, outputs, ``opset`` (always 20) and ``ir_version`` (always 10): what onnxruntime >= 1.19 reads |
| ``dynamics`` | ``family``, ``overrides`` (the run's range overrides) and ``params`` (the dynamics space, overrides applied) |
| ``config`` | the run's training config |
| ``producer`` | versions of robometa, torch, onnx, onnxruntime, python |
| ``files`` | name -> ``sha256``, ``bytes`` for every other file |

Methods that do not adapt (empty ``policy.lrs``, e.g. the privileged oracle) still get an
``adapt.onnx``: plain fine-tuning of every parameter with the TD inner loss and the learning
rate ``adaptation.fine_tune_lr`` of the run config (default 1e-3), and ``inner.fine_tune`` is
true in the manifest. Their ``inner.steps`` stays the policy's (0 for the oracle), so
``adapt()`` needs an explicit step count.

Replacing an output directory (what ``export_bundle`` promises about ``out_dir``):

* **Only its own files.** A directory is a robometa bundle when its ``manifest.json`` has an
  integer ``format_version``, a ``files`` table and ``producer.robometa``. robometa *owns*
  exactly the files that table lists plus ``manifest.json``. A missing or empty ``out_dir`` is
  written without asking; an existing bundle is replaced only with ``overwrite=True``
  (``--overwrite``). Everything else is refused and left untouched: a non-empty directory that
  is not a bundle (a web app with its own ``manifest.json``, notes, a run directory), and a
  bundle that also holds files robometa did not write (``adapter-state.npz``, ``notes.txt``),
  whose error names those files: export never removes them, and the runtime loads a bundle
  only without them, so they have to be moved out first. Nothing is ever removed with
  ``rmtree``: a directory is emptied file by file (the files it owns) and removed only once
  empty; otherwise it is kept and a warning names what is left in it.
* **Atomic swap.** The new bundle is written, verified and fsynced in a sibling
  ``.NAME.robometa-new-PID-XXXX`` directory. A missing ``out_dir`` is then created by one
  ``rename``; an existing one (empty, or a bundle) is exchanged with the new directory by
  Linux's ``renameat2(RENAME_EXCHANGE)`` (called through ctypes): one atomic step, so at every
  instant ``out_dir`` holds the complete old or the complete new bundle, even under
  ``SIGKILL``. This holds on Linux file systems that implement the exchange (ext4, xfs, btrfs,
  tmpfs, ...). Elsewhere (macOS, Windows, some network or FUSE file systems) the swap is two
  renames, old to ``.NAME.robometa-old-PID-XXXX`` and new into place, and a kill between them
  leaves ``out_dir`` missing with the complete old bundle beside it, which the next export
  restores: there the guarantee is "the old or the new bundle once another export has run",
  not at every instant. Either way the swap replaces directory entries: a process that holds
  the old directory open, or reads file by file across the swap, may see the old files; the
  runtime checks every file's sha256 against the manifest it read, so such a mix is refused,
  never used.
* **Leftovers.** An export killed midway leaves only siblings with the names above. Every
  export holds an ``flock`` on the parent directory (so two exports never clean up each
  other's work; where ``flock`` is unsupported, leftovers of live PIDs are skipped), and first
  restores a missing ``out_dir`` from a complete moved-aside bundle (``.NAME.robometa-old-*``,
  or ``.NAME.old-PID`` from robometa before this layout), then empties and removes the other
  leftovers by the rules above. Other hidden names, such as a user's ``.NAME.backup``, are
  never touched.
* **Where.** ``out_dir`` may be a symlink to a directory: the directory it points to is
  replaced and the link stays; a dangling link is refused. The current directory or one of
  its parents (``--out .``) is refused, since swapping it away would leave the shell in a
  deleted directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import platform
import re
import shutil
import stat
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from robometa import __version__
from robometa.adaptation import Batch, InnerLoss, adapt_step
from robometa.deploy.bundle import (
    ADAPT_GRAPH,
    CONFIG_FILE,
    FORMAT_VERSION,
    LOSS_OUTPUT,
    LR_PREFIX,
    LRS_FILE,
    MANIFEST_FILE,
    NEW_PREFIX,
    PARAM_PREFIX,
    PARAMS_FILE,
    POLICY_GRAPH,
    REQUIRED_FILES,
    Bundle,
    BundleError,
    sha256_file,
)
from robometa.export import export_adapt_graph, export_policy_graph, policy_param_names
from robometa.networks import Params, q_values
from robometa.policy import POLICY_FILE, Policy

DEFAULT_FINE_TUNE_LR = 1e-3
#: tolerances of the parity check run after every export.
Q_TOLERANCE = 1e-5
PARAM_TOLERANCE = 1e-4


def fine_tune_lr(config: dict[str, Any]) -> float:
    """``adaptation.fine_tune_lr`` of a run config (or a top-level ``fine_tune_lr``)."""
    adaptation = config.get("adaptation")
    value = config.get("fine_tune_lr", DEFAULT_FINE_TUNE_LR)
    if isinstance(adaptation, dict) and "fine_tune_lr" in adaptation:
        value = adaptation["fine_tune_lr"]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value <= 0:
        raise ValueError(f"config fine_tune_lr must be a positive number, got {value!r}")
    return float(value)


def adaptation_of(policy: Policy) -> tuple[Params, InnerLoss, bool]:
    """The learning rates and inner loss the bundle exports, and whether it is fine-tuning.

    A method with learning rates exports them as trained (the trainer's DQN policies already
    carry plain fine-tuning rates). A method without (``lrs`` empty, e.g. the oracle) exports
    fine-tuning of every parameter with the TD loss at the config's ``fine_tune_lr``.
    """
    if policy.lrs:
        lrs = {k: v.detach().float() for k, v in policy.lrs.items()}
        return lrs, policy.inner, False
    lr = fine_tune_lr(policy.config)
    inner = InnerLoss(
        kind="td",
        gamma=policy.inner.gamma,
        huber_delta=policy.inner.huber_delta,
        model_weight=policy.inner.model_weight,
    )
    return {k: torch.tensor(lr) for k in policy.params}, inner, True


def export_bundle(
    policy_or_run_dir: Policy | str | Path,
    out_dir: str | Path,
    verify: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a bundle for a trained policy (or ``RUN_DIR/policy.pt``) to ``out_dir``.

    ``out_dir`` may be missing or empty; an existing robometa bundle is replaced only with
    ``overwrite``; any other non-empty directory, or a bundle that also holds files robometa
    did not write, is refused with ``FileExistsError`` naming them, and left untouched. The
    bundle is written and verified next to ``out_dir`` and swapped in atomically (the exact
    guarantee is in the module docstring).
    With ``verify`` the written bundle is read back with the runtime's reader and checked
    against torch (Q-values within 1e-5, one adaptation step within 1e-4); a mismatch raises.
    """
    run_dir: Path | None = None
    if isinstance(policy_or_run_dir, Policy):
        policy, source = policy_or_run_dir, "policy"
    else:
        run_dir = Path(policy_or_run_dir)
        policy = Policy.load(run_dir)
        source = str(run_dir / POLICY_FILE if run_dir.is_dir() else run_dir)
    check_env_ids(policy, source)
    out = Path(out_dir)
    target = _resolve_target(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _parent_lock(target.parent) as locked:
        _recover_leftovers(target, locked)
        _check_target(out, target, overwrite)
        prefix = f".{target.name}.{_NEW_TAG}-{os.getpid()}-"
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        replaced: Path | None = None
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be copied and shared
            _write(policy, tmp, run_dir)
            if verify:
                check_parity(policy, tmp)
            _fsync_tree(tmp)
            replaced = _swap_into_place(tmp, target)
        finally:
            _empty_and_remove(tmp, target)  # the new bundle after a failure, or the old one
            if replaced is not None:
                _empty_and_remove(replaced, target)
    return out


def check_env_ids(policy: Policy, source: str) -> None:
    """Refuse env ids (the policy's and its config's ``env.id``) that are not robometa families.

    Runs before ``gymnasium.make`` ever sees an id from a file: ``make`` imports whatever module
    is named before a colon (``"this:robometa/CartPole-v0"`` runs ``import this``).
    """
    from robometa.envs import FAMILIES

    ids = {"env_id": policy.env_id}
    env = policy.config.get("env") if isinstance(policy.config, dict) else None
    if isinstance(env, dict) and "id" in env:
        ids["config env.id"] = env["id"]
    for what, value in ids.items():
        if not isinstance(value, str) or value not in FAMILIES:
            raise ValueError(
                f"{source}: {what} {value!r} is not a registered robometa family "
                f"(one of {', '.join(FAMILIES)}); refusing to build it"
            )


# --------------------------------------------------------------------------- the output directory

#: every file name an export writes (a temp directory without a manifest yet holds only these).
_WRITTEN_FILES: tuple[str, ...] = (*REQUIRED_FILES, CONFIG_FILE, MANIFEST_FILE)
_NEW_TAG = "robometa-new"  # .NAME.robometa-new-PID-XXXX: the bundle being written
_OLD_TAG = "robometa-old"  # .NAME.robometa-old-PID-XXXX: the replaced bundle (two-rename swap)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _resolve_target(out: Path) -> Path:
    """The directory to replace: ``out`` with symlinks followed; never the cwd or its parents."""
    target = Path(os.path.realpath(out))
    if out.is_symlink() and not target.exists():
        raise FileNotFoundError(
            f"bundle output {out} is a symlink to {target}, which does not exist"
        )
    try:
        cwd: Path | None = Path(os.path.realpath(os.getcwd()))
    except FileNotFoundError:  # the current directory was deleted: nothing to protect
        cwd = None
    if cwd is not None and (target == cwd or target in cwd.parents):
        what = "the current directory" if target == cwd else "a parent of the current directory"
        raise ValueError(
            f"bundle output {out} is {what} ({target}); an export replaces the whole "
            f"directory, so name one you are not in, e.g. --out {out / 'bundle'}"
        )
    return target


def _shown(out: Path, target: Path) -> str:
    return f"{out} (symlink to {target})" if out.is_symlink() else str(out)


def _check_target(out: Path, target: Path, overwrite: bool) -> None:
    """Raise unless ``target`` is missing, empty, or (with ``overwrite``) only a bundle."""
    shown = _shown(out, target)
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise FileExistsError(f"bundle output {shown} exists and is not a directory")
    entries = sorted(os.listdir(target))
    if not entries:
        return
    manifest = _robometa_manifest(target)
    if manifest is None:
        why = (
            f"its {MANIFEST_FILE} was not written by robometa"
            if MANIFEST_FILE in entries
            else f"it has no {MANIFEST_FILE}"
        )
        raise FileExistsError(
            f"bundle output {shown} is a non-empty directory that is not a robometa bundle "
            f"({why}); refusing to touch it: choose another --out"
        )
    owned = _owned_files(target, manifest)
    foreign = [e for e in entries if e not in owned]
    if foreign:
        raise FileExistsError(
            f"bundle output {shown} holds a robometa bundle and also {', '.join(foreign)}, "
            "which robometa did not write; the export replaces the whole directory in one "
            f"step and never moves or removes those: move them out of {out}, then export with "
            "--overwrite"
        )
    if not overwrite:
        raise FileExistsError(
            f"bundle output {shown} already holds a robometa bundle; pass --overwrite "
            "(overwrite=True) to replace it"
        )


def _robometa_manifest(root: Path) -> dict[str, Any] | None:
    """``root``'s manifest if robometa wrote it (format_version, files, producer.robometa)."""
    path = root / MANIFEST_FILE
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return None
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError):  # some other program's manifest.json
        return None
    if not isinstance(doc, dict):
        return None
    version, files, producer = doc.get("format_version"), doc.get("files"), doc.get("producer")
    ours = (
        isinstance(version, int)
        and not isinstance(version, bool)
        and isinstance(files, dict)
        and isinstance(producer, dict)
        and isinstance(producer.get("robometa"), str)
    )
    return doc if ours else None


def _owned_files(root: Path, manifest: dict[str, Any]) -> set[str]:
    """The files robometa wrote in a bundle: those its manifest lists, and the manifest."""
    owned = {MANIFEST_FILE}
    for name in manifest["files"]:
        plain = isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name
        if plain and _is_file_or_link(root / name):
            owned.add(name)
    return owned


def _is_file_or_link(path: Path) -> bool:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)


@contextlib.contextmanager
def _parent_lock(parent: Path) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``parent`` while exporting into it.

    Yields whether the lock is held: where ``flock`` is unsupported (not POSIX, some network
    file systems) the export still runs, and leftovers of live processes are left alone.
    """
    try:
        import fcntl
    except ImportError:
        yield False
        return
    fd = os.open(parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = True
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL):
                raise
            locked = False
        yield locked
    finally:
        os.close(fd)


def _leftovers(target: Path, locked: bool) -> list[tuple[str, Path]]:
    """``(kind, path)`` of the siblings killed exports of ``target`` left, oldest first.

    ``kind`` is ``new`` (a bundle being written, or the old one after an exchange) or ``old``
    (a bundle moved aside by the two-rename swap, or by robometa before this layout:
    ``.NAME.old-PID``). Without the lock, those of processes still alive are skipped.
    """
    pattern = re.compile(
        rf"\.{re.escape(target.name)}\."
        rf"(?:{_NEW_TAG}-(?P<new>\d+)-\w+|{_OLD_TAG}-(?P<old>\d+)-\w+|old-(?P<legacy>\d+))"
    )
    found = []
    for entry in os.scandir(target.parent):
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(match["new"] or match["old"] or match["legacy"])
        if not locked and _alive(pid):
            continue
        kind = "new" if match["new"] else "old"
        found.append((entry.stat(follow_symlinks=False).st_mtime, kind, Path(entry.path)))
    return [(kind, path) for _, kind, path in sorted(found)]


def _alive(pid: int) -> bool:
    if sys.platform == "win32":  # no signal 0 there: assume it may be running
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover_leftovers(target: Path, locked: bool) -> None:
    """Restore a missing ``target`` from a killed export's moved-aside bundle; clean the rest."""
    leftovers = _leftovers(target, locked)
    if not os.path.lexists(target):
        for kind, path in reversed(leftovers):  # the newest complete one
            if kind == "old" and _is_complete(path):
                os.rename(path, target)
                leftovers.remove((kind, path))
                break
    for _, path in leftovers:
        _empty_and_remove(path, target)


def _is_complete(path: Path) -> bool:
    if _robometa_manifest(path) is None:
        return False
    try:
        Bundle.load(path)
    except BundleError:
        return False
    return True


def _empty_and_remove(path: Path, live: Path) -> None:
    """Remove a directory an export made or replaced, file by file, keeping what is not ours.

    Removed: the files its manifest lists (in a temp directory without a manifest yet, the
    bundle's file names). The manifest goes last, so an interrupted clean-up stays
    recognisable. A directory that still holds anything else is kept, with a warning.
    """
    try:
        entries = os.listdir(path)
    except FileNotFoundError:
        return
    manifest = _robometa_manifest(path)
    if manifest is not None:
        owned = _owned_files(path, manifest)
    elif path.name.startswith(f".{live.name}.{_NEW_TAG}-"):
        owned = {n for n in _WRITTEN_FILES if _is_file_or_link(path / n)}
    else:
        owned = set()
    for name in sorted(owned & set(entries), key=lambda n: n == MANIFEST_FILE):
        (path / name).unlink()
    rest = sorted(os.listdir(path))
    if rest:
        warnings.warn(
            f"kept {path}: it holds {', '.join(rest)}, which robometa did not write "
            f"(left over next to {live}; move or delete them)",
            stacklevel=2,
        )
        return
    path.rmdir()


def _swap_into_place(new: Path, target: Path) -> Path | None:
    """Put the ``new`` bundle at ``target``; return where the replaced directory now is."""
    if not os.path.lexists(target):
        os.rename(new, target)
        _fsync_dir(target.parent)
        return None
    if _exchange(new, target):
        _fsync_dir(target.parent)
        return new
    # Two renames: between them ``target`` is missing, and the next export restores it.
    prefix = f".{target.name}.{_OLD_TAG}-{os.getpid()}-"
    old = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    os.rename(target, old)  # onto the empty placeholder: POSIX allows that for directories
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    _fsync_dir(target.parent)
    return old


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    False where that is unavailable: not Linux, a C library without ``renameat2``, or a file
    system that does not implement the exchange.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:
        return False
    path, fd = ctypes.c_char_p, ctypes.c_int
    renameat2.argtypes = [fd, path, fd, path, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _fsync_tree(root: Path) -> None:
    """Flush a written bundle to disk, so that what is swapped in survives a power cut too."""
    for f in root.iterdir():
        if f.is_file() and not f.is_symlink():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    if sys.platform == "win32":  # directories cannot be opened for fsync there
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(policy: Policy, root: Path, run_dir: Path | None) -> None:
    lrs, inner, fine_tune = adaptation_of(policy)
    params = {k: v.detach().float() for k, v in policy.params.items()}
    manifest = build_manifest(policy, params, lrs, inner, fine_tune)  # first: it checks shapes
    export_policy_graph(policy.net, params, root / POLICY_GRAPH)
    export_adapt_graph(policy.net, params, lrs, inner, root / ADAPT_GRAPH)
    np.savez(root / PARAMS_FILE, **{k: v.numpy() for k, v in params.items()})
    np.savez(root / LRS_FILE, **{k: v.numpy().astype(np.float32) for k, v in lrs.items()})
    if run_dir is not None and (run_dir / CONFIG_FILE).is_file():
        shutil.copyfile(run_dir / CONFIG_FILE, root / CONFIG_FILE)
    for name in (POLICY_GRAPH, ADAPT_GRAPH):
        _finish_graph(root / name, manifest, name)
    manifest["graphs"] = {
        "policy": _graph_entry(root / POLICY_GRAPH),
        "adapt": _graph_entry(root / ADAPT_GRAPH),
    }
    manifest["files"] = {
        f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        for f in sorted(root.iterdir())
        if f.name != MANIFEST_FILE
    }
    (root / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


def _finish_graph(path: Path, manifest: dict[str, Any], name: str) -> None:
    """Stamp ONNX ``metadata_props`` and run the full checker on a written graph."""
    model = onnx.load(str(path))
    props = {
        "robometa.format_version": str(FORMAT_VERSION),
        "robometa.graph": name,
        "robometa.env_id": manifest["env_id"],
        "robometa.algorithm": manifest["algorithm"],
        "robometa.privileged": json.dumps(manifest["privileged"]),
        "robometa.inner_kind": manifest["inner"]["kind"],
        "robometa.adapted": ",".join(manifest["inner"]["adapted"]),
        "robometa.version": __version__,
    }
    onnx.helper.set_model_props(model, props)
    model.doc_string = (
        "robometa policy: obs -> Q-values, greedy action"
        if name == POLICY_GRAPH
        else "robometa adaptation step: params, lrs, transitions, gamma -> new params, loss"
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _graph_entry(path: Path) -> dict[str, Any]:
    model = onnx.load(str(path))
    return {
        "file": path.name,
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "ir_version": model.ir_version,
    }


def _json_bound(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def build_manifest(
    policy: Policy, params: Params, lrs: Params, inner: InnerLoss, fine_tune: bool
) -> dict[str, Any]:
    """Everything but ``graphs`` and ``files`` (those need the written files)."""
    import gymnasium as gym

    import robometa.envs  # noqa: F401  (registers the robot families)

    check_env_ids(policy, "policy")  # before gymnasium.make imports anything it names
    try:
        env = gym.make(policy.env_id)
    except gym.error.Error as err:
        raise ValueError(f"policy env_id {policy.env_id!r} cannot be made: {err}") from None
    try:
        base = env.unwrapped
        space = base.dynamics_space
        if policy.dynamics:
            space = space.with_overrides(policy.dynamics)
        box = env.observation_space
        names = list(getattr(base, "observation_names", ())) or [
            f"obs_{i}" for i in range(box.shape[0])
        ]
        low = [_json_bound(v) for v in box.low.tolist()]
        high = [_json_bound(v) for v in box.high.tolist()]
        action_names = list(getattr(base, "action_names", ())) or [
            f"action_{i}" for i in range(env.action_space.n)
        ]
        n_actions = int(env.action_space.n)
    finally:
        env.close()
    if policy.privileged:
        names += [f"dynamics:{n}" for n in space.names]
        low += [None] * len(space)
        high += [None] * len(space)
    spec = policy.net.spec
    if spec.obs_dim != len(names) or spec.n_actions != n_actions:
        raise ValueError(
            f"policy network takes obs_dim={spec.obs_dim}, n_actions={spec.n_actions}, but "
            f"{policy.env_id} has obs_dim={len(names)}"
            f"{' (with the dynamics appended)' if policy.privileged else ''}, "
            f"n_actions={n_actions}"
        )
    net = policy.net
    return {
        "format_version": FORMAT_VERSION,
        "env_id": policy.env_id,
        "algorithm": policy.algorithm,
        "privileged": bool(policy.privileged),
        "observation": {
            "shape": [spec.obs_dim],
            "dtype": "float32",
            "low": low,
            "high": high,
            "names": names,
        },
        "action": {"n": n_actions, "names": action_names},
        "discount": float(inner.gamma),
        "normalization": {
            "obs_mean": net.obs_mean.tolist(),
            "obs_std": net.obs_std.tolist(),
            "delta_std": net.delta_std.tolist(),
        },
        "network": {
            "obs_dim": spec.obs_dim,
            "n_actions": spec.n_actions,
            "hidden": list(spec.hidden),
            "context_dim": spec.context_dim,
            "activation": spec.activation,
            "policy_inputs": policy_param_names(params),
        },
        "inner": {
            "kind": inner.kind,
            "huber_delta": inner.huber_delta,
            "model_weight": inner.model_weight,
            "steps": int(policy.adapt_steps),
            "support_size": int(policy.support_size),
            "adapted": list(lrs),
            "lr": {k: _lr_summary(v) for k, v in lrs.items()},
            "fine_tune": fine_tune,
            # Meta-learned inner loops were trained to start from the meta-parameters on
            # fresh support data; fine-tuning continues from wherever it is.
            "from_meta": not fine_tune,
        },
        "parameters": {k: {"shape": list(v.shape), "adapted": k in lrs} for k, v in params.items()},
        "dynamics": {
            "family": space.family,
            "overrides": policy.dynamics,
            "params": space.to_json(),
        },
        "config": policy.config,
        "producer": _producer(),
    }


def _lr_summary(lr: torch.Tensor) -> float | dict[str, Any]:
    if lr.dim() == 0:
        return float(lr)
    return {
        "per_parameter": True,
        "shape": list(lr.shape),
        "min": float(lr.min()),
        "max": float(lr.max()),
        "mean": float(lr.mean()),
    }


def _producer() -> dict[str, str]:
    import onnxruntime

    return {
        "robometa": __version__,
        "torch": str(torch.__version__),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------- parity


def check_parity(policy: Policy, bundle_dir: str | Path, seed: int = 0) -> dict[str, float]:
    """Compare a written bundle with torch; raise ``AssertionError`` beyond the tolerances.

    Returns the largest absolute differences (``q_values``, ``adapted_params``) for reporting.
    """
    import onnxruntime as ort

    bundle = Bundle.load(bundle_dir)
    lrs, inner, _ = adaptation_of(policy)
    net = policy.net
    params = {k: v.detach().float() for k, v in policy.params.items()}
    gen = torch.Generator().manual_seed(seed)
    obs = net.obs_mean + net.obs_std * torch.randn(7, net.spec.obs_dim, generator=gen)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    pol = ort.InferenceSession(str(bundle.file(POLICY_GRAPH)), options, ["CPUExecutionProvider"])
    feeds = _feeds(pol, bundle.params, obs=obs.numpy())
    q_ort, a_ort = pol.run(None, feeds)
    with torch.no_grad():
        q_torch = q_values(net, params, obs)
    q_err = float(np.abs(q_ort - q_torch.numpy()).max())
    if q_err > Q_TOLERANCE or not np.array_equal(a_ort, q_torch.argmax(1).numpy()):
        raise AssertionError(f"{bundle.file(POLICY_GRAPH)}: Q-values differ from torch by {q_err}")
    n = 9
    b_obs = net.obs_mean + net.obs_std * torch.randn(n, net.spec.obs_dim, generator=gen)
    batch = Batch(
        b_obs,
        torch.randint(0, net.spec.n_actions, (n,), generator=gen),
        torch.randn(n, generator=gen),
        b_obs + 0.1 * net.obs_std * torch.randn(n, net.spec.obs_dim, generator=gen),
        (torch.rand(n, generator=gen) < 0.2).float(),
    )
    with torch.no_grad():
        new_torch, loss_torch = adapt_step(net, params, lrs, batch, inner)
    ad = ort.InferenceSession(str(bundle.file(ADAPT_GRAPH)), options, ["CPUExecutionProvider"])
    feeds = _feeds(
        ad,
        bundle.params,
        lrs=bundle.lrs,
        obs=batch.obs.numpy(),
        action=batch.action.numpy(),
        reward=batch.reward.numpy(),
        next_obs=batch.next_obs.numpy(),
        terminated=batch.terminated.numpy(),
        gamma=np.float32(bundle.discount),
    )
    outputs = dict(zip([o.name for o in ad.get_outputs()], ad.run(None, feeds), strict=True))
    p_err = max(
        float(np.abs(outputs[NEW_PREFIX + k] - new_torch[k].numpy()).max()) for k in bundle.adapted
    )
    loss_err = abs(float(outputs[LOSS_OUTPUT]) - float(loss_torch))
    if p_err > PARAM_TOLERANCE or loss_err > PARAM_TOLERANCE:
        raise AssertionError(
            f"{bundle.file(ADAPT_GRAPH)}: adapted parameters differ from torch by {p_err}, "
            f"loss by {loss_err}"
        )
    return {"q_values": q_err, "adapted_params": p_err, "loss": loss_err}


def _feeds(
    session: Any,
    params: dict[str, np.ndarray],
    lrs: dict[str, np.ndarray] | None = None,
    **data: Any,
) -> dict[str, np.ndarray]:
    """Feed every input the session declares, by its prefix."""
    feeds: dict[str, np.ndarray] = {}
    for i in session.get_inputs():
        if i.name.startswith(PARAM_PREFIX):
            feeds[i.name] = params[i.name.removeprefix(PARAM_PREFIX)]
        elif i.name.startswith(LR_PREFIX):
            feeds[i.name] = (lrs or {})[i.name.removeprefix(LR_PREFIX)]
        else:
            feeds[i.name] = np.asarray(data[i.name])
    return feeds
