"""A numpy-only stand-in robot with the cart-pole's interface (gymnasium's reset/step).

Observation ``(cart position, cart velocity, pole angle, pole angular velocity)`` float32,
actions 0 push left, 1 none, 2 push right; ``motor_sign=-1`` mounts the motor reversed.
Linearized cart-pole dynamics at 50 Hz. Used where PyBullet is not available (the fresh
virtual environment test) and to keep loop tests fast.
"""

from __future__ import annotations

import numpy as np

HIGH = np.array([4.8, 20.0, np.pi, 50.0], dtype=np.float32)


class FakeCartPole:
    def __init__(self, motor_sign: float = -1.0, max_steps: int = 60) -> None:
        self.motor_sign = motor_sign
        self.max_steps = max_steps
        self.state = np.zeros(4)
        self.t = 0

    def reset(self, *, seed: int | None = None) -> tuple[np.ndarray, dict]:
        rng = np.random.default_rng(seed)
        self.state = rng.uniform(-0.05, 0.05, size=4)
        self.t = 0
        return self.state.astype(np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        x, xd, th, thd = self.state
        force = 10.0 * self.motor_sign * (int(action) - 1)
        thdd = (9.81 * th - force * 0.9) / 0.6
        xdd = force / 1.1 - 0.05 * thdd
        dt = 0.02
        xd, thd = xd + dt * xdd, thd + dt * thdd
        x, th = x + dt * xd, th + dt * thd
        self.state = np.array([x, xd, th, thd])
        self.t += 1
        terminated = bool(abs(x) > 2.4 or abs(th) > 0.21)
        truncated = self.t >= self.max_steps and not terminated
        obs = np.clip(self.state, -HIGH, HIGH).astype(np.float32)
        return obs, 1.0, terminated, truncated, {}
