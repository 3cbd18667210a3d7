"""Frame sampling by presentation time.

A camera's real frame rate is rarely its nominal one (variable frame rate, dropped frames,
25 vs 30 fps feeds), so taking "every Nth frame" drifts. Sampling on the stream's own clock
(pts) gives ``sample_fps`` frames per second of video whatever the input rate.
"""

from __future__ import annotations

import math

# Float pts (pts * time_base) can land a hair below an exact slot boundary; without a little
# slack a 30 fps stream sampled at 10 fps would sometimes wait a 4th frame instead of the 3rd.
_EPSILON_S = 1e-6


class FrameSampler:
    """Decides which decoded frames to keep so that kept frames are ``1/sample_fps`` s apart in pts.

    Slots are on a fixed grid anchored at the first accepted frame, so the long-run rate is
    exactly ``sample_fps`` even when the frame interval does not divide the sampling interval.
    A pts that goes backwards (reconnect, file loop, camera clock reset) starts a new grid at
    that frame instead of waiting for the old timeline to be reached again.
    """

    def __init__(self, sample_fps: float) -> None:
        if not (sample_fps > 0 and math.isfinite(sample_fps)):
            raise ValueError(f"sample_fps must be a positive number, got {sample_fps!r}")
        self.sample_fps = float(sample_fps)
        self.interval_s = 1.0 / self.sample_fps
        self._slot: float | None = None  # grid point of the last accepted frame
        self._last_pts: float | None = None  # last pts seen, accepted or not

    def reset(self) -> None:
        """Forget the timeline: the next frame is accepted whatever its pts."""
        self._slot = None
        self._last_pts = None

    def accept(self, pts_s: float) -> bool:
        """True if the frame at ``pts_s`` (seconds) should be kept."""
        if not math.isfinite(pts_s):
            raise ValueError(f"pts must be finite, got {pts_s!r}")
        if self._last_pts is not None and pts_s < self._last_pts:
            self._slot = None  # the timeline jumped backwards: a new one starts here
        self._last_pts = pts_s
        if self._slot is None:
            self._slot = pts_s
            return True
        elapsed = pts_s - self._slot
        if elapsed + _EPSILON_S < self.interval_s:
            return False
        # Advance to the last grid point at or before pts (skipping slots across a gap).
        self._slot += math.floor((elapsed + _EPSILON_S) / self.interval_s) * self.interval_s
        return True
