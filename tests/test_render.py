"""robometa.render: labelled frames, panels side by side, GIF and MP4 writing."""

from __future__ import annotations

import types

import imageio.v3 as iio
import numpy as np
import pytest

from robometa.render import (
    episode_frames,
    label_above,
    label_frame,
    side_by_side,
    write_video,
)


def scene(h: int = 120, w: int = 160, value: int = 90) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


class CountingEnv:
    """A 'robot' whose frames encode the step (pixel value) and that ends after ``length``
    steps with reward 1 per step; records the task and seed it was given."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.unwrapped = types.SimpleNamespace(set_task=self._set_task)
        self.task = self.seed = None
        self.t = 0

    def _set_task(self, task: object) -> None:
        self.task = task

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        self.seed, self.t = seed, 0
        return np.zeros(2, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return np.zeros(2, np.float32), 1.0, self.t >= self.length, False, {}

    def render(self) -> np.ndarray:
        return scene(value=self.t)


def banner_rows(labelled: np.ndarray, original: np.ndarray) -> np.ndarray:
    return np.flatnonzero((labelled != original).any(axis=(1, 2)))


class TestLabelFrame:
    def test_changes_pixels_in_a_top_banner_only_and_leaves_the_input_alone(self):
        frame = scene()
        before = frame.copy()
        out = label_frame(frame, ["before adapting: return 13", "step 4   return 4"])
        assert out.shape == frame.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(frame, before)
        rows = banner_rows(out, frame)
        assert rows[0] == 0 and rows[-1] == len(rows) - 1  # one contiguous band from the top
        assert len(rows) < frame.shape[0] // 2
        np.testing.assert_array_equal(out[len(rows) :], frame[len(rows) :])

    def test_text_is_dark_on_a_light_band(self):
        out = label_frame(scene(), ["step 12   return 12"])
        band = out[: banner_rows(out, scene())[-1] + 1]
        assert np.median(band) > 200  # light band
        assert band.min() < 80  # dark text drawn on it

    def test_more_lines_need_a_taller_band_and_long_lines_still_fit(self):
        one = len(banner_rows(label_frame(scene(), ["a"]), scene()))
        two = len(banner_rows(label_frame(scene(), ["a", "b"]), scene()))
        assert two > one
        long = label_frame(scene(w=100), ["after 5 steps on 200 transitions: return 180"])
        assert long.shape == (120, 100, 3)

    def test_label_above_adds_the_band_over_an_untouched_scene(self):
        frame = scene()
        out = label_above(frame, ["title", "step 0   return 0"])
        band = out.shape[0] - frame.shape[0]
        assert band > 0
        np.testing.assert_array_equal(out[band:], frame)

    def test_rejects_a_frame_that_is_not_hxwx3_uint8(self):
        with pytest.raises(ValueError, match=r"HxWx3 uint8.*float64"):
            label_frame(np.zeros((4, 4, 3)), ["x"])


class TestEpisodeFrames:
    def test_sets_the_task_and_seed_and_keeps_every_nth_frame_plus_the_last(self):
        env = CountingEnv(length=7)
        frames, total, steps = episode_frames(env, lambda _o: 0, "task-A", 123, "title", every=3)
        assert (env.task, env.seed) == ("task-A", 123)
        assert (total, steps) == (7.0, 7)
        assert len(frames) == 4  # steps 0, 3, 6 and the final 7
        band = frames[0].shape[0] - 120
        assert [int(f[band:].mean()) for f in frames] == [0, 3, 6, 7]

    def test_labels_differ_per_step_and_the_last_frame_says_final_return(self):
        env = CountingEnv(length=2)
        frames, _, _ = episode_frames(env, lambda _o: 0, None, 0, "title")
        band = frames[0].shape[0] - 120
        banners = [f[:band] for f in frames]
        assert not np.array_equal(banners[0], banners[1])
        # "final return 2" is longer than "return 1": more ink on the last banner's row.
        ink = [int((b < 128).sum()) for b in banners]
        assert ink[2] > ink[1]

    def test_an_env_without_rgb_rendering_is_a_clear_error(self):
        env = CountingEnv(length=2)
        env.render = lambda: None
        with pytest.raises(ValueError, match="render_mode='rgb_array'"):
            episode_frames(env, lambda _o: 0, None, 0, "title")


class TestSideBySide:
    def test_a_shorter_panel_holds_its_last_frame_until_the_longest_ends(self):
        long = [scene(value=v) for v in (10, 20, 30, 40)]
        short = [scene(value=v) for v in (100, 110)]
        out = side_by_side([long, short], gap=8)
        assert len(out) == 4
        assert out[0].shape == (120, 160 + 8 + 160, 3)
        assert [int(f[:, :160].mean()) for f in out] == [10, 20, 30, 40]
        assert [int(f[:, 168:].mean()) for f in out] == [100, 110, 110, 110]
        assert (out[0][:, 160:168] == 255).all()  # the gap

    def test_panels_of_different_heights_are_padded_at_the_bottom(self):
        out = side_by_side([[scene(h=100)], [scene(h=120)]])
        assert out[0].shape[0] == 120
        assert (out[0][100:, :160] == 255).all()

    def test_an_empty_panel_is_an_error(self):
        with pytest.raises(ValueError, match="non-empty panel"):
            side_by_side([[scene()], []])


class TestWriteVideo:
    def test_writes_a_gif_that_reads_back_with_its_frames(self, tmp_path):
        frames = [scene(value=v) for v in (0, 80, 160, 240)]
        path = write_video(tmp_path / "sub" / "clip.gif", frames, fps=10)
        assert path.read_bytes()[:6] in (b"GIF89a", b"GIF87a")
        back = iio.imread(path, index=None)
        assert back.shape[0] == 4 and back.shape[1:3] == (120, 160)
        assert [int(f[..., :3].mean()) for f in back] == [0, 80, 160, 240]

    def test_another_suffix_is_an_error_naming_the_path_and_the_allowed_ones(self, tmp_path):
        with pytest.raises(ValueError, match=r"clip\.avi.*'\.avi'.*\.gif, \.mp4"):
            write_video(tmp_path / "clip.avi", [scene()])

    def test_mp4_without_imageio_ffmpeg_says_how_to_get_it(self, tmp_path, monkeypatch):
        import builtins

        real_import = builtins.__import__

        def no_ffmpeg(name, *args, **kwargs):
            if name == "imageio_ffmpeg":
                raise ImportError("No module named 'imageio_ffmpeg'")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_ffmpeg)
        with pytest.raises(RuntimeError, match=r"pip install imageio-ffmpeg.*\.gif"):
            write_video(tmp_path / "clip.mp4", [scene()])
