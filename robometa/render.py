"""Labelled episode videos: frames with a text banner, panels side by side, GIF or MP4.

The quickstart's before/after GIF and ``robometa play`` are built from these four functions:
``episode_frames`` renders one greedy episode with its title, step counter and running return
drawn on every frame (``label_frame``), ``side_by_side`` lines up episodes of different
lengths, and ``write_video`` writes the result. Text is drawn with Pillow (a matplotlib
dependency) and its default font.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from robometa.deploy import collection

VIDEO_SUFFIXES = (".gif", ".mp4")
BANNER_FILL = (250, 250, 250)
BANNER_PAD = 4
MIN_TEXT_PX, MAX_TEXT_PX = 9, 24
TEXT_FILL = (20, 20, 20)
PANEL_GAP_FILL = 255


@lru_cache(maxsize=16)
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable font, Pillow >= 10.1
    except TypeError:  # older Pillow: the fixed-size bitmap default font
        return ImageFont.load_default()


def _fitting_font(lines: Sequence[str], width: int) -> Any:
    """The largest font (at most ~width/22 px) whose longest line fits ``width``."""
    size = int(np.clip(width // 22, MIN_TEXT_PX, MAX_TEXT_PX))
    while True:
        font = _font(size)
        widest = max(font.getbbox(text)[2] for text in lines)
        if widest + 2 * BANNER_PAD <= width or size <= MIN_TEXT_PX:
            return font
        size -= 1


def label_frame(frame: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Return a copy of an HxWx3 uint8 frame with the text lines drawn in a banner at the top.

    Dark text on a light band across the full width, one row per line, in the largest font
    that fits the width; the band covers only the rows the text needs, and the rest of the
    frame is left untouched.
    """
    from PIL import Image, ImageDraw

    frame = _checked_frame(frame)
    if not lines:
        return frame.copy()
    height, width = frame.shape[:2]
    font = _fitting_font(lines, width)
    band = min(height, _band_height(font, len(lines)))
    image = Image.fromarray(frame.copy())
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, width - 1, band - 1], fill=BANNER_FILL)
    line_h = _line_height(font)
    for i, text in enumerate(lines):
        draw.text((BANNER_PAD, BANNER_PAD + i * line_h), text, fill=TEXT_FILL, font=font)
    return np.asarray(image, dtype=np.uint8)


def label_above(frame: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Like :func:`label_frame`, but the banner is a new band above the frame, so the text
    hides nothing of the scene (the result is taller by the banner's height)."""
    frame = _checked_frame(frame)
    if not lines:
        return frame.copy()
    band = _band_height(_fitting_font(lines, frame.shape[1]), len(lines))
    taller = np.pad(frame, ((band, 0), (0, 0), (0, 0)), constant_values=BANNER_FILL[0])
    return label_frame(taller, lines)


def _checked_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(
            f"expected an HxWx3 uint8 frame, got shape {frame.shape} dtype {frame.dtype}"
        )
    return frame


def _line_height(font: Any) -> int:
    return font.getbbox("Ag")[3] + 2


def _band_height(font: Any, n_lines: int) -> int:
    return 2 * BANNER_PAD + _line_height(font) * n_lines


@dataclass
class Recording:
    """One rendered episode: raw frames, and the step and running return at each frame."""

    frames: list[np.ndarray]
    steps: list[int]
    returns: list[float]

    @property
    def total(self) -> float:
        return self.returns[-1]

    @property
    def length(self) -> int:
        return self.steps[-1]


def record_episode(
    env: Any, act: Callable[[np.ndarray], int], task: Any, seed: int, every: int = 1
) -> Recording:
    """Run the greedy episode of ``act`` on ``task`` from ``reset(seed=seed)``, rendering the
    start, every ``every``-th step and the last step (unlabelled, so that a title can name
    the episode's final return).

    A stateful actor (one with ``observe``: :func:`robometa.deploy.collection.observer`,
    the ``dr-history``, ``rma`` and ``recurrent`` families') observes every step the physics
    did not reject, as in :func:`robometa.rollout.episode_return`, so it plays with its
    memory running and the recorded return is the one ``episode_return`` measures."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    env.unwrapped.set_task(task)
    obs, _ = env.reset(seed=seed)

    def grab() -> np.ndarray:
        frame = env.render()
        if frame is None:
            raise ValueError(
                "env.render() returned None: make the env with render_mode='rgb_array'"
            )
        return frame

    observe = collection.observer(act)
    rec = Recording([grab()], [0], [0.0])
    total, done, t = 0.0, False, 0
    while not done:
        action = act(obs)
        nxt, r, term, trunc, info = env.step(action)
        if observe is not None and not info.get("physics_error", False):
            observe(obs, action, r, nxt, bool(term))
        obs = nxt
        total += float(r)
        done = bool(term or trunc)
        t += 1
        if done or t % every == 0:
            rec.frames.append(grab())
            rec.steps.append(t)
            rec.returns.append(total)
    return rec


def label_episode(rec: Recording, title: str) -> list[np.ndarray]:
    """``rec``'s frames labelled with ``title`` (a newline starts another line), ``step t``
    and the running return; the last frame shows the final return. The banner goes above
    the scene (:func:`label_above`), so a tall robot is never hidden behind the text."""
    last = len(rec.frames) - 1
    return [
        label_above(
            frame,
            [
                *title.split("\n"),
                f"step {t}   {'final return' if i == last else 'return'} {total:.0f}",
            ],
        )
        for i, (frame, t, total) in enumerate(zip(rec.frames, rec.steps, rec.returns, strict=True))
    ]


def episode_frames(
    env: Any,
    act: Callable[[np.ndarray], int],
    task: Any,
    seed: int,
    title: str,
    every: int = 1,
) -> tuple[list[np.ndarray], float, int]:
    """Set the task, ``reset(seed=seed)`` and render the greedy episode of ``act`` to its end.

    ``env`` must have ``render_mode="rgb_array"``. A frame is kept at the start, every
    ``every`` steps and at the end; each is labelled with ``title``, ``step t`` and the running
    return (in a banner above the rendered scene: frames are taller than ``env.render()``'s),
    and the last one with the final return. Returns (frames, return, steps).
    """
    rec = record_episode(env, act, task, seed, every)
    return label_episode(rec, title), rec.total, rec.length


def side_by_side(panels: Sequence[list[np.ndarray]], gap: int = 8) -> list[np.ndarray]:
    """Concatenate panels horizontally frame by frame, with a white ``gap`` between them.

    A shorter panel holds its last frame until the longest ends; panels of different heights
    are padded with white at the bottom.
    """
    if not panels or any(len(p) == 0 for p in panels):
        raise ValueError(
            f"side_by_side needs at least one non-empty panel, got lengths "
            f"{[len(p) for p in panels]}"
        )
    n = max(len(p) for p in panels)
    height = max(p[0].shape[0] for p in panels)

    def padded(frame: np.ndarray) -> np.ndarray:
        extra = height - frame.shape[0]
        if extra == 0:
            return frame
        return np.pad(frame, ((0, extra), (0, 0), (0, 0)), constant_values=PANEL_GAP_FILL)

    spacer = np.full((height, gap, 3), PANEL_GAP_FILL, np.uint8)
    out = []
    for i in range(n):
        row = []
        for j, panel in enumerate(panels):
            if j:
                row.append(spacer)
            row.append(padded(panel[min(i, len(panel) - 1)]))
        out.append(np.concatenate(row, axis=1))
    return out


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = 25) -> Path:
    """Write ``frames`` as a looping GIF (``.gif``) or an H.264 MP4 (``.mp4``, needs
    imageio-ffmpeg). Returns the path."""
    import imageio.v2 as imageio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(
            f"cannot write video {path}: suffix {path.suffix or '(none)'!r} is not one of "
            f"{', '.join(VIDEO_SUFFIXES)}"
        )
    if not frames:
        raise ValueError(f"cannot write video {path}: no frames")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError as e:
            raise RuntimeError(
                f"writing {path} needs the ffmpeg backend: `pip install imageio-ffmpeg`, "
                "or write a .gif instead"
            ) from e
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        imageio.mimsave(path, list(frames), duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(path, list(frames), fps=fps)
    return path
