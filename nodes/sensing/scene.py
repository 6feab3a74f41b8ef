"""The simulated doorstep the `sim` camera renders, so the door graph runs without a camera.

A fixed timeline repeats every `period_s` seconds: the owner walks up to the door and stands
there, leaves, nobody is there, a visitor comes and goes, nobody again. Faces are real
photographs shipped in `data/` (see data/README.md for their provenance and licences), pasted
with a feathered oval mask at a slowly varying position, size and brightness, over a drawn
hallway with mild sensor noise. Everything is a pure function of time, so tests can ask what
the scene shows at t and check it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from iotrt.lazy import LazyModule
from iotrt.lazy import numpy as np

# OpenCV and numpy load when a scene is made (the camera's start), not on import.
cv2 = LazyModule("cv2")

DATA = Path(__file__).with_name("data")
NOISE_SHIFTS = 8     # the sim noise repeats every 8 frames (each shifted by 4 rows)
# Shipped faces: name -> file. The names are what the scene reports as ground truth.
FACES: dict[str, str] = {"owner": "owner.jpg", "visitor": "visitor.jpg"}

# (start, end) of each appearance as fractions of the period, and who appears.
TIMELINE: tuple[tuple[float, float, str], ...] = ((0.0, 1 / 3, "owner"), (0.5, 5 / 6, "visitor"))


def load_face(name: str) -> np.ndarray:
    """A shipped face photo as RGB uint8."""
    path = DATA / FACES[name]
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"sim camera: cannot read shipped face photo {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class Appearance:
    """Who is in view at a given time, and where (for tests and the door demo)."""

    name: str
    centre: tuple[float, float]  # pixel centre of the pasted photo
    height: int  # pasted photo height in pixels
    gain: float  # brightness multiplier


class DoorScene:
    """Renders RGB frames of the simulated doorstep: `scene.render(t)`."""

    def __init__(self, width: int = 640, height: int = 480, period_s: float = 12.0, seed: int = 0):
        if width < 160 or height < 120:
            raise ValueError(f"sim camera: frame {width}x{height} is too small (min 160x120)")
        self.width, self.height, self.period_s = width, height, period_s
        self.faces = {name: load_face(name) for name in FACES}
        self.masks = {name: self._oval(face.shape[:2]) for name, face in self.faces.items()}
        self.background = self._hallway()
        # Sensor noise from a small bank of precomputed frames, added and subtracted with
        # saturating uint8 ops: drawing fresh Gaussian noise for 640x480x3 took longer than a
        # frame period on a small board.
        # One frame of noise plus NOISE_SHIFTS * 4 rows: frame k takes the rows from a shifted
        # offset, so successive frames get different noise from 2 MB at 640x480 (a bank of
        # 4 whole frames held 7.4 MB in the camera process, a third of its heap).
        # cv2's generator, not numpy.random: the camera process then imports neither
        # numpy.random nor, through it, `secrets` and OpenSSL (~1.5 MB of its memory).
        noise = np.empty((height + 4 * NOISE_SHIFTS, width, 3), np.float32)
        cv2.setRNGSeed(seed)
        cv2.randn(noise, (0.0, 0.0, 0.0), (2.0, 2.0, 2.0))
        self._noise_up = np.clip(noise, 0, 255).astype(np.uint8)    # the positive part
        np.negative(noise, out=noise)
        self._noise_down = np.clip(noise, 0, 255).astype(np.uint8)  # the negative part
        del noise
        self._count = 0

    def _hallway(self) -> np.ndarray:
        w, h = self.width, self.height
        ramp = np.linspace(170, 120, h, dtype=np.float32)[:, None, None]
        bg = np.broadcast_to(ramp * np.array([1.0, 0.95, 0.85], np.float32), (h, w, 3)).copy()
        bg[int(h * 0.8) :] *= 0.6  # floor
        door = (int(w * 0.3), int(h * 0.08), int(w * 0.7), int(h * 0.8))
        cv2.rectangle(bg, door[:2], door[2:], (95, 70, 50), thickness=-1)
        cv2.rectangle(bg, door[:2], door[2:], (60, 45, 30), thickness=max(2, w // 100))
        cv2.circle(bg, (int(w * 0.66), int(h * 0.45)), max(3, w // 80), (200, 180, 90), -1)
        return bg.astype(np.uint8)

    def appearance(self, t: float) -> Appearance | None:
        """Who is in view at time t (seconds since the camera started), or None."""
        phase = (t % self.period_s) / self.period_s
        for start, end, name in TIMELINE:
            if start <= phase < end:
                u = (phase - start) / (end - start)  # 0 -> 1 across the appearance
                # Walk in from the side during the first fifth, then sway gently.
                walk = min(1.0, u / 0.2)
                sway = math.sin(2 * math.pi * u * 2)
                cx = self.width * (0.5 + (1 - walk) * 0.35 + 0.06 * sway)
                cy = self.height * (0.45 + 0.03 * math.sin(2 * math.pi * u * 3))
                size = int(self.height * (0.55 + 0.1 * walk + 0.05 * sway))
                gain = 1.0 + 0.15 * math.sin(2 * math.pi * u)
                return Appearance(name, (cx, cy), size, gain)
        return None

    def render(self, t: float) -> np.ndarray:
        frame = self.background.copy()
        who = self.appearance(t)
        if who is not None:
            self._paste(frame, who)
        k = 4 * (self._count % NOISE_SHIFTS)
        self._count += 1
        cv2.add(frame, self._noise_up[k:k + self.height], dst=frame)
        cv2.subtract(frame, self._noise_down[k:k + self.height], dst=frame)
        return frame

    @staticmethod
    def _oval(shape: tuple[int, int]) -> np.ndarray:
        """A feathered oval mask: head and shoulders without a hard photo edge."""
        h, w = shape
        mask = np.zeros((h, w), np.float32)
        cv2.ellipse(mask, (w // 2, h // 2), (int(w * 0.46), int(h * 0.48)), 0, 0, 360, 1.0, -1)
        return cv2.GaussianBlur(mask, (0, 0), max(1.0, h / 40))

    def _paste(self, frame: np.ndarray, who: Appearance) -> None:
        face = self.faces[who.name]
        fh, fw = face.shape[:2]
        h = who.height
        w = max(1, round(fw * h / fh))
        interp = cv2.INTER_AREA if h < fh else cv2.INTER_LINEAR
        photo = cv2.resize(face, (w, h), interpolation=interp).astype(np.float32) * who.gain
        mask = cv2.resize(self.masks[who.name], (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
        x0, y0 = round(who.centre[0] - w / 2), round(who.centre[1] - h / 2)
        # Clip the paste to the frame: people walk in from outside the view.
        fx0, fy0 = max(0, x0), max(0, y0)
        fx1, fy1 = min(self.width, x0 + w), min(self.height, y0 + h)
        if fx1 <= fx0 or fy1 <= fy0:
            return
        src = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
        region = frame[fy0:fy1, fx0:fx1]
        blended = region * (1 - mask[src]) + photo[src] * mask[src]
        region[:] = np.clip(blended, 0, 255).astype(np.uint8)
