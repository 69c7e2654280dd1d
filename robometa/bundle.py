"""The bundle format, writer side: ``export_bundle(run_dir or policy, out_dir)``.

The layout, file names, graph input/output names and the format version are defined once in
:mod:`robometa.deploy.bundle` (the reader); this module fills them in from a trained
:class:`~robometa.policy.Policy` and verifies the result with that same reader.

What a bundle holds belongs to the policy's method family (the rsl_rl ``as_onnx`` pattern):
``export_bundle`` looks the policy's ``algorithm`` up in :mod:`robometa.algorithms` and calls
its class's :meth:`~robometa.methods.base.Method.write_bundle`, which writes the graphs and
arrays into an empty directory and the manifest through :func:`shared_manifest` and
:func:`finish_bundle`, and verifies it with the class's
:meth:`~robometa.methods.base.Method.check_bundle`. Every builtin family writes the
``gradient`` kind (:mod:`robometa.bundle_gradient`); a family of another kind overrides both
(and the deploy side adds the kind's runtime with ``robometa.deploy.kinds.register_kind``). This module keeps what every kind shares: the output
directory (below), the env-id checks, the shared manifest sections, the files table, fsync and
the verification with the reader.

``manifest.json`` keys (shared: written here for every kind; gradient: by
:mod:`robometa.bundle_gradient`):

| key | kind | content |
|---|---|---|
| ``format_version`` | shared | layout version (readers refuse others) |
| ``kind`` | shared | the bundle kind, which picks the on-device runtime: the algorithm's ``bundle_kind`` in :mod:`robometa.algorithms` (``gradient`` for every builtin method; a reader treats a missing ``kind`` as ``gradient``) |
| ``env_id``, ``algorithm``, ``privileged`` | shared | the robot family, the method, whether the observation carries the true dynamics (oracle) |
| ``observation`` | shared | ``shape``, ``dtype``, ``low``, ``high`` (``null`` = unbounded), ``names``; for a privileged policy the normalized dynamics parameters are appended as ``dynamics:<name>`` |
| ``action`` | shared | ``n`` and ``names`` of the discrete actions |
| ``discount`` | gradient | the ``gamma`` fed to ``adapt.onnx`` |
| ``normalization`` | gradient | ``obs_mean``, ``obs_std``, ``delta_std`` (already inside the graphs; informational) |
| ``network`` | gradient | the network spec (hidden sizes, context size, activation) |
| ``inner`` | gradient | ``kind`` (td, model, td+model), ``huber_delta``, ``model_weight``, ``steps``, ``support_size``, ``adapted`` (parameter names), ``lr`` (per adapted parameter: a number, or ``{per_parameter, shape, min, max, mean}`` for Meta-SGD), ``fine_tune`` (true when the policy had no learning rates and the export added plain fine-tuning), ``from_meta`` (true: every ``adapt`` starts from the meta-parameters, as in meta-training) |
| ``parameters`` | gradient | name -> ``shape``, ``adapted`` |
| ``graphs`` | per kind | per graph: file, inputs, outputs, ``opset`` (always 20) and ``ir_version`` (always 10): what onnxruntime >= 1.19 reads (:func:`graph_entry`); the gradient kind has ``policy`` and ``adapt`` |
| ``dynamics`` | shared | ``family``, ``overrides`` (the run's range overrides) and ``params`` (the dynamics space, overrides applied) |
| ``config`` | shared | the run's training config |
| ``producer`` | shared | versions of robometa, torch, onnx, onnxruntime, python |
| ``files`` | shared | name -> ``sha256``, ``bytes`` for every other file |

Every ONNX graph is stamped (:func:`stamp_graph`) with ``metadata_props``
``robometa.format_version``, ``robometa.graph`` (its file name), ``robometa.kind``,
``robometa.env_id``, ``robometa.algorithm``, ``robometa.privileged``, ``robometa.version`` and
what its kind adds (gradient: ``robometa.inner_kind``, ``robometa.adapted``).

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
  ``SIGKILL``. The temporary directory is the export's own: when the family's
  ``write_bundle`` or the verification fails, it is removed with whatever was written in it
  (and nothing else). This holds on Linux file systems that implement the exchange (ext4, xfs, btrfs,
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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from robometa import __version__
from robometa.algorithms import AlgorithmSpec
from robometa.algorithms import get as get_algorithm
from robometa.deploy.bundle import (
    CONFIG_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    REQUIRED_FILES,
    Bundle,
    BundleError,
    sha256_file,
)
from robometa.deploy.files import fsync_dir
from robometa.deploy.kinds import DEFAULT_KIND as GRADIENT_KIND
from robometa.policy import POLICY_FILE, Policy

#: names that moved to :mod:`robometa.bundle_gradient` with the gradient kind; still readable
#: here (imported on first use, so that importing this module imports no family's writer)
_GRADIENT_NAMES = frozenset(
    {
        "DEFAULT_FINE_TUNE_LR",
        "PARAM_TOLERANCE",
        "Q_TOLERANCE",
        "adaptation_of",
        "build_manifest",
        "check_parity",
        "fine_tune_lr",
    }
)


def __getattr__(name: str) -> Any:
    if name in _GRADIENT_NAMES:
        from robometa import bundle_gradient

        return getattr(bundle_gradient, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    against torch by its family's :meth:`~robometa.methods.base.Method.check_bundle` (the
    gradient kind's: Q-values within 1e-5, one adaptation step within 1e-4); a mismatch
    raises. A family exporting another kind without its own ``check_bundle`` is refused
    before anything is written, unless ``verify`` is off.

    What the bundle holds is the policy's method family's: the ``write_bundle`` of the class
    :mod:`robometa.algorithms` registers for ``policy.algorithm`` (a ``ValueError`` naming the
    algorithm, before anything is written, when none is registered).
    """
    run_dir: Path | None = None
    if isinstance(policy_or_run_dir, Policy):
        policy, source = policy_or_run_dir, "policy"
    else:
        run_dir = Path(policy_or_run_dir)
        policy = Policy.load(run_dir)
        source = str(run_dir / POLICY_FILE if run_dir.is_dir() else run_dir)
    check_env_ids(policy, source)
    spec = algorithm_of(policy, source)
    parity = _parity_check(spec) if verify else None
    out = Path(out_dir)
    target = _resolve_target(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _parent_lock(target.parent) as locked:
        _recover_leftovers(target, locked)
        _check_target(out, target, overwrite)
        prefix = f".{target.name}.{_NEW_TAG}-{os.getpid()}-"
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        fresh = _dir_id(tmp)  # the directory this export made (an exchange swaps the path)
        replaced: Path | None = None
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be copied and shared
            _write(policy, tmp, run_dir)
            if parity is not None:
                parity(policy, tmp)
            _fsync_tree(tmp)
            replaced = _swap_into_place(tmp, target)
        finally:
            if fresh is not None and _dir_id(tmp) == fresh:
                _remove_fresh(tmp)  # the new bundle after a failure: all written by this export
            else:
                _empty_and_remove(tmp, target)  # the old bundle after an exchange
            if replaced is not None:
                _empty_and_remove(replaced, target)
    return out


def algorithm_of(policy: Policy, source: str = "policy") -> AlgorithmSpec:
    """The registered spec of ``policy.algorithm``, its class loadable; else ``ValueError``."""
    try:
        spec = get_algorithm(policy.algorithm)
        spec.load()
    except ValueError as err:
        raise ValueError(f"{source}: cannot export: {err}") from None
    return spec


def _parity_check(spec: AlgorithmSpec) -> Callable[[Policy, Path], Any]:
    """The family's parity check, ``check_bundle(policy, bundle_dir)``: its own, or the
    default of :class:`~robometa.methods.base.Method` (the ``check_parity`` of the family's
    ``bundle_writer``, by default the gradient kind's) where the family names its own
    ``bundle_writer`` or the algorithm's ``bundle_kind`` is ``gradient``; else ``ValueError``."""
    from robometa.methods.base import Method

    method = spec.load()
    check = getattr(method, "check_bundle", None)
    default = getattr(check, "__func__", None) is Method.check_bundle.__func__
    default = default and getattr(method, "bundle_writer", None) == Method.bundle_writer
    if check is None or (default and spec.bundle_kind != GRADIENT_KIND):
        raise ValueError(
            f"algorithm {spec.name!r} exports bundle kind {spec.bundle_kind!r}, which has no "
            f"parity check ({method.__module__}.{method.__qualname__} does not define "
            "check_bundle; the default checks gradient bundles); define it, or export without "
            "verification (verify=False, --no-verify)"
        )
    return check


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

#: the file names a gradient export writes: what the clean-up of another export's temporary
#: directory without a manifest yet removes (this export's own is removed whole).
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
    """Remove a directory an export replaced or a killed one left, file by file, keeping what
    is not ours.

    Removed: the files its manifest lists (in a killed export's temp directory without a
    manifest yet, a gradient bundle's file names). The manifest goes last, so an interrupted
    clean-up stays recognisable. A directory that still holds anything else is kept, with a
    warning.
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
        why = (
            "which robometa did not write"
            if manifest is not None or not path.name.startswith(f".{live.name}.{_NEW_TAG}-")
            else "which its manifest does not list (a killed export of another bundle kind "
            "may have written them before its manifest)"
        )
        warnings.warn(
            f"kept {path}: it holds {', '.join(rest)}, {why} "
            f"(left over next to {live}; move or delete them)",
            stacklevel=2,
        )
        return
    path.rmdir()


def _dir_id(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of the directory at ``path`` itself (``None``: none there)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


def _remove_fresh(path: Path) -> None:
    """Remove the temporary directory this export made, with whatever the family's
    ``write_bundle`` wrote in it before it failed (every entry is this export's own: ``mkdtemp``
    made the directory empty, and only its owner can write in it). Nothing outside it is
    touched: a symlink is removed, never followed. The manifest goes last, so an interrupted
    clean-up leaves a directory the next export recognises."""
    for top, dirs, files in os.walk(path, topdown=False, followlinks=False):
        for name in files:
            if not (top == str(path) and name == MANIFEST_FILE):
                os.unlink(os.path.join(top, name))
        for name in dirs:
            sub = os.path.join(top, name)
            if os.path.islink(sub):
                os.unlink(sub)
            else:
                os.rmdir(sub)
    with contextlib.suppress(FileNotFoundError):
        (path / MANIFEST_FILE).unlink()
    path.rmdir()


def _swap_into_place(new: Path, target: Path) -> Path | None:
    """Put the ``new`` bundle at ``target``; return where the replaced directory now is."""
    if not os.path.lexists(target):
        os.rename(new, target)
        fsync_dir(target.parent)
        return None
    if _exchange(new, target):
        fsync_dir(target.parent)
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
    fsync_dir(target.parent)
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
    fsync_dir(root)


# --------------------------------------------------------------------------- the family's files


def _write(policy: Policy, root: Path, run_dir: Path | None) -> None:
    """Have the policy's method family write its bundle into the empty ``root``, then check
    that it wrote a robometa manifest of its kind listing every file it wrote."""
    spec = algorithm_of(policy)
    method = spec.load()
    method.write_bundle(policy, root, run_dir)
    who = f"algorithm {spec.name!r} ({method.__module__}.{method.__qualname__}.write_bundle)"
    manifest = _robometa_manifest(root)
    if manifest is None:
        raise ValueError(
            f"{who} wrote no robometa {MANIFEST_FILE} (write it with robometa.bundle.finish_bundle)"
        )
    if manifest.get("kind") != spec.bundle_kind:
        raise ValueError(
            f"{who} wrote a bundle of kind {manifest.get('kind')!r}, but the algorithm's "
            f"bundle_kind is {spec.bundle_kind!r}"
        )
    owned = _owned_files(root, manifest)
    unlisted = sorted(set(os.listdir(root)) - owned)
    if unlisted:
        raise ValueError(
            f"{who} wrote {', '.join(unlisted)} without listing them in the manifest's files"
        )
    missing = sorted(set(manifest["files"]) - owned)
    if missing:
        raise ValueError(f"{who} lists {', '.join(map(repr, missing))} but did not write them")


#: the order of the manifest's keys: the shared head, the kind's own sections, the shared tail
_HEAD_KEYS = (
    "format_version",
    "kind",
    "env_id",
    "algorithm",
    "privileged",
    "observation",
    "action",
)
_TAIL_KEYS = ("dynamics", "config", "producer", "graphs", "files")


def finish_bundle(root: Path, manifest: Mapping[str, Any], run_dir: Path | None) -> dict[str, Any]:
    """Copy the run's ``config.yaml`` (when ``run_dir`` has one), add the ``files`` table (every
    file in ``root``) and write ``manifest.json``: the last step of a family's
    ``write_bundle``. Returns the manifest written."""
    if run_dir is not None and (run_dir / CONFIG_FILE).is_file():
        shutil.copyfile(run_dir / CONFIG_FILE, root / CONFIG_FILE)
    files = {
        f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        for f in sorted(root.iterdir())
        if f.name != MANIFEST_FILE
    }
    doc = {**manifest, "files": files}
    ordered = {k: doc[k] for k in _HEAD_KEYS if k in doc}
    ordered |= {k: v for k, v in doc.items() if k not in _HEAD_KEYS and k not in _TAIL_KEYS}
    ordered |= {k: doc[k] for k in _TAIL_KEYS if k in doc}
    (root / MANIFEST_FILE).write_text(json.dumps(ordered, indent=2) + "\n")
    return ordered


def stamp_graph(
    path: Path, manifest: Mapping[str, Any], doc: str, extra: Mapping[str, str] | None = None
) -> None:
    """Stamp ONNX ``metadata_props`` (the shared ones, then ``extra``) and ``doc_string`` on a
    written graph, and run the full checker on it."""
    model = onnx.load(str(path))
    props = {
        "robometa.format_version": str(FORMAT_VERSION),
        "robometa.graph": path.name,
        "robometa.kind": manifest["kind"],
        "robometa.env_id": manifest["env_id"],
        "robometa.algorithm": manifest["algorithm"],
        "robometa.privileged": json.dumps(manifest["privileged"]),
        **(extra or {}),
        "robometa.version": __version__,
    }
    onnx.helper.set_model_props(model, props)
    model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def graph_entry(path: Path) -> dict[str, Any]:
    """A graph's ``manifest["graphs"]`` entry: file, inputs, outputs, opset, IR version."""
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


def shared_manifest(policy: Policy, kind: str) -> dict[str, Any]:
    """The manifest sections every bundle kind has, ``kind`` included (see the module
    docstring). A family's ``write_bundle`` calls this first: it refuses an env id that is not
    a robometa family, and a network that does not fit the env's observation and actions."""
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
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
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
        "dynamics": {
            "family": space.family,
            "overrides": policy.dynamics,
            "params": space.to_json(),
        },
        "config": policy.config,
        "producer": _producer(),
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
