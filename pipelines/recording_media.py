"""Media of the long synthetic recordings: scenes drawn as frames, the soundtrack, the mp4.

A :class:`Scene` is a stretch of a head camera's view: its own background (a
colour gradient, smooth noise, a pattern and soft clutter), a camera that
drifts, shakes, rolls and zooms a little, lighting that changes, and
:class:`Visit` s of objects (the shape × colour × texture classes of
:mod:`pipelines.schema`) that slide in from an edge or pop up, move, rotate,
grow and shrink, sit partly outside the frame or behind each other, and leave.
:func:`render_scene` draws a whole scene at once with numpy and measures, per
frame, how much of each object is really visible. The soundtrack is a room's
varying noise with non-speech sounds (hums, clicks, knocks, rustles, squeaks)
and reverberant speech; :func:`write_av` muxes video and AAC audio into one mp4.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from pipelines.render import COLOUR_RGB, _shape_mask, add_video_stream, texture_paint
from pipelines.schema import class_attributes

CHUNK_FRAMES = 48  # frames drawn at once (bounds memory at large sizes)
VISIBLE_SHARE = 0.3  # an object is "in view" when this share of its area is on screen
SOUND_KINDS = ("hum", "click", "knock", "rustle", "squeak")
AUDIO_FRAME = 1024  # samples per AAC frame


@functools.cache
def shape_area(shape: str) -> float:
    """Area of ``shape`` at radius 1 (pixels² per radius²), measured on a fine grid."""
    grid = np.linspace(-1.0, 1.0, 801, dtype=np.float32)
    u, v = np.meshgrid(grid, grid)
    return float(_shape_mask(shape, u, v, 1.0).mean() * 4.0)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Zero-mean smooth noise [size, size] (unit std of the grid): a ``cells``² grid, upsampled."""
    grid = rng.normal(0.0, 1.0, size=(cells + 1, cells + 1)).astype(np.float32)
    pos = np.linspace(0.0, cells, size, dtype=np.float32)
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    w = _smoothstep(pos - i0)
    rows = grid[:, i0] * (1 - w) + grid[:, i0 + 1] * w
    return rows[i0, :] * (1 - w)[:, None] + rows[i0 + 1, :] * w[:, None]


def background(rng: np.random.Generator, canvas: int) -> np.ndarray:
    """A scene's world [canvas, canvas, 3] float32: gradient, smooth noise, pattern, clutter."""
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32) / canvas
    phi = rng.uniform(0, 2 * np.pi)
    ramp = np.clip((xx - 0.5) * np.cos(phi) + (yy - 0.5) * np.sin(phi) + 0.5, 0, 1)
    grey = rng.uniform(45, 190, size=2)
    tints = rng.normal(0.0, rng.uniform(5, 35), size=(2, 3))
    c1, c2 = grey[0] + tints[0], grey[1] + tints[1]
    img = c1 + (c2 - c1) * ramp[..., None]
    img += smooth_noise(rng, int(rng.integers(3, 9)), canvas)[..., None] * rng.uniform(6, 28)
    img += smooth_noise(rng, max(4, canvas // 3), canvas)[..., None] * rng.uniform(2, 9)
    if rng.random() < 0.4:  # floorboards, wallpaper, a rug's weave
        psi = rng.uniform(0, np.pi)
        period = rng.uniform(0.05, 0.25)
        wave = np.sin(2 * np.pi * (xx * np.cos(psi) + yy * np.sin(psi)) / period)
        img += (wave * rng.uniform(4, 14))[..., None]
    for _ in range(int(rng.integers(0, 5))):  # soft furniture-like clutter
        cx, cy = rng.uniform(0, 1, size=2)
        ax, ay = rng.uniform(0.08, 0.35, size=2)
        if rng.random() < 0.5:
            dist = np.maximum(np.abs(xx - cx) / ax, np.abs(yy - cy) / ay)
        else:
            dist = np.hypot((xx - cx) / ax, (yy - cy) / ay)
        alpha = (1 - _smoothstep((dist - 0.85) / 0.3)) * rng.uniform(0.4, 0.9)
        colour = img.mean(axis=(0, 1)) + rng.normal(0, 35, size=3)
        img = img * (1 - alpha[..., None]) + colour * alpha[..., None]
    return np.clip(img, 0, 255).astype(np.float32)


@dataclass
class Visit:
    """One stay of an object in view: how it comes in, moves and goes.

    Frames are absolute frame numbers of the recording; positions are world
    pixels of the scene (the screen when the camera is at rest).

    Attributes:
        class_id: the object's class.
        start, stop: first frame and the frame after the last.
        params: motion and look, drawn by :meth:`random`.
    """

    class_id: int
    start: int
    stop: int
    params: dict[str, np.ndarray | float] = field(default_factory=dict)

    @classmethod
    def random(cls, class_id: int, start: int, stop: int, *, enters: bool, leaves: bool,
               size: int, fps: int, rng: np.random.Generator) -> Visit:
        """A visit with random motion; ``enters``/``leaves``: it crosses the frame edge."""
        p: dict[str, np.ndarray | float] = {}
        r = rng.uniform(0.11, 0.28) * size
        p["radius"] = r
        edge_slack = -0.35 * r if rng.random() < 0.25 else 0.9 * r  # sometimes cut by the edge
        p["rest"] = rng.uniform(edge_slack, size - edge_slack, size=2)
        seconds = (stop - start) / fps
        p["drift"] = rng.normal(0.0, 0.15 * size / max(seconds, 1.0), size=2)
        p["wobble"] = rng.uniform(0.0, 0.06 * size, size=2)
        p["wobble_hz"] = rng.uniform(0.15, 1.0, size=2)
        p["phases"] = rng.uniform(0, 2 * np.pi, size=4)
        p["scale_amp"] = rng.uniform(0.0, 0.3)
        p["scale_hz"] = rng.uniform(0.03, 0.25)
        p["angle"] = rng.uniform(0, 2 * np.pi)
        p["spin"] = rng.normal(0.0, 0.6) if rng.random() < 0.6 else 0.0
        p["rock"] = rng.uniform(0.0, 0.4)
        _, colour, _ = class_attributes(class_id)
        p["rgb"] = np.asarray(COLOUR_RGB[colour], np.float32) * rng.uniform(0.8, 1.15, size=3)
        p["period"] = rng.uniform(2.0, 3.4)
        p["shade"] = rng.uniform(0.0, 0.35)
        p["shade_dir"] = rng.uniform(0, 2 * np.pi)
        for end, crosses in (("in", enters), ("out", leaves)):
            pops = rng.random() < 0.3  # put down in view / snatched away, rather than sliding
            p[f"t_{end}"] = 0.0 if not crosses or pops else rng.uniform(0.4, 1.5)
            side = rng.integers(4)
            along = rng.uniform(0.1, 0.9) * size
            off = -1.6 * r - 0.1 * size
            p[f"edge_{end}"] = np.array([(off, along), (size - off, along), (along, off),
                                         (along, size - off)][side], np.float64)
        return cls(class_id, start, stop, p)

    def path(self, frames: np.ndarray, fps: int) -> tuple[np.ndarray, ...]:
        """Centre x, y, angle and radius of the object at absolute ``frames``."""
        p = self.params
        tau = (frames - self.start) / fps
        length = (self.stop - self.start) / fps
        ph = np.asarray(p["phases"])
        wob, hz = np.asarray(p["wobble"]), np.asarray(p["wobble_hz"])
        x = p["rest"][0] + p["drift"][0] * tau + wob[0] * np.sin(2 * np.pi * hz[0] * tau + ph[0])
        y = p["rest"][1] + p["drift"][1] * tau + wob[1] * np.sin(2 * np.pi * hz[1] * tau + ph[1])
        for end, weight in (("in", tau), ("out", length - tau)):
            t_cross = float(p[f"t_{end}"])
            if t_cross > 0:
                w = _smoothstep(weight / t_cross)
                edge = np.asarray(p[f"edge_{end}"])
                x, y = edge[0] + (x - edge[0]) * w, edge[1] + (y - edge[1]) * w
        angle = (float(p["angle"]) + float(p["spin"]) * tau
                 + float(p["rock"]) * np.sin(2 * np.pi * 0.3 * tau + ph[2]))
        radius = float(p["radius"]) * (1 + float(p["scale_amp"]) * np.sin(
            2 * np.pi * float(p["scale_hz"]) * tau + ph[3]))
        return x, y, angle, radius


@dataclass
class Scene:
    """A continuous stretch of view: frames [start, stop), its visits, its own look.

    Attributes:
        start, stop: first frame and the frame after the last.
        seed: seeds the background, camera, lighting and sensor noise.
        visits: objects in view, back to front.
    """

    start: int
    stop: int
    seed: list[int]
    visits: list[Visit]


def _camera(rng: np.random.Generator, t: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """Head-camera motion over times ``t``: offsets x, y (pixels), roll (rad), zoom."""
    scale = size / 64
    n = len(t)
    offs = []
    for _ in range(2):
        amp = rng.uniform(0.5, 3.5, size=2) * scale
        hz = rng.uniform(0.04, 0.35, size=2)
        ph = rng.uniform(0, 2 * np.pi, size=2)
        drift = (amp[:, None] * np.sin(2 * np.pi * hz[:, None] * t + ph[:, None])).sum(0)
        shake = np.cumsum(rng.normal(0, rng.uniform(0.1, 0.6) * scale, size=n))
        width = max(1, min(9, n))
        shake -= np.convolve(shake, np.ones(width) / width, mode="same")  # jitter, not a walk
        offs.append(drift + shake)
    if n and rng.random() < 0.35:  # a quick glance aside and back
        t0, dur = rng.uniform(t[0], t[-1] + 1e-6), rng.uniform(0.4, 1.2)
        bump = np.sin(np.pi * np.clip((t - t0) / dur, 0, 1)) * rng.uniform(3, 7) * scale
        offs[int(rng.integers(2))] += bump * rng.choice([-1, 1])
    roll = rng.uniform(0, 0.06) * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t
                                         + rng.uniform(0, 2 * np.pi))
    zoom = 1 + rng.uniform(0, 0.05) * np.sin(2 * np.pi * rng.uniform(0.03, 0.15) * t
                                              + rng.uniform(0, 2 * np.pi))
    return offs[0], offs[1], roll, zoom


def _lighting(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Per-frame RGB gain [F, 3]: exposure drift, a light going on/off, white balance."""
    gain = rng.uniform(0.7, 1.15) * (1 + rng.uniform(0, 0.15) * np.sin(
        2 * np.pi * rng.uniform(0.02, 0.15) * t + rng.uniform(0, 2 * np.pi)))
    if len(t) and rng.random() < 0.3:
        at = rng.uniform(t[0], t[-1] + 1e-6)
        gain = gain * (1 + rng.uniform(-0.25, 0.25) * _smoothstep((t - at) / 1.0))
    tint = 1 + rng.normal(0, 0.05, size=3)[None, :] + rng.normal(0, 0.02, size=3)[None, :] \
        * np.sin(2 * np.pi * rng.uniform(0.02, 0.1) * t + rng.uniform(0, 6))[:, None]
    return (gain[:, None] * tint).astype(np.float32)


def render_scene(scene: Scene, size: int, fps: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw a scene: frames uint8 [F, size, size, 3] and visibility bool [F, len(visits)].

    A visit is visible in a frame when at least :data:`VISIBLE_SHARE` of its
    area is on screen and not hidden behind an object in front.
    """
    rng = np.random.default_rng(scene.seed)
    margin = size // 4 + 4
    canvas = size + 2 * margin
    world = background(rng, canvas)
    n = scene.stop - scene.start
    t = np.arange(n) / fps
    cam_x, cam_y, roll, zoom = _camera(rng, t, size)
    light = _lighting(rng, t)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - size / 2, xx - size / 2
    vignette = (1 - rng.uniform(0, 0.35) * (dx * dx + dy * dy) / (size * size / 2))
    sigma = rng.uniform(1.5, 6.0)
    bank = rng.normal(0, sigma, size=(16, size, size, 3)).astype(np.float32)
    frames = np.empty((n, size, size, 3), np.uint8)
    visible = np.zeros((n, len(scene.visits)), bool)
    flat = world.reshape(-1, 3)
    for c0 in range(0, n, CHUNK_FRAMES):
        sl = slice(c0, min(n, c0 + CHUNK_FRAMES))
        cam = (cam_x[sl], cam_y[sl], roll[sl], zoom[sl])
        cos, sin = np.cos(roll[sl])[:, None, None], np.sin(roll[sl])[:, None, None]
        z = zoom[sl][:, None, None]
        wx = size / 2 + cam_x[sl][:, None, None] + z * (cos * dx - sin * dy)
        wy = size / 2 + cam_y[sl][:, None, None] + z * (sin * dx + cos * dy)
        ix = np.clip(np.rint(wx + margin).astype(np.int32), 0, canvas - 1)
        iy = np.clip(np.rint(wy + margin).astype(np.int32), 0, canvas - 1)
        img = flat[iy * canvas + ix]
        owner = np.full(wx.shape, -1, np.int8)
        absolute = np.arange(sl.start, sl.stop) + scene.start
        for k, visit in enumerate(scene.visits):
            act = np.flatnonzero((absolute >= visit.start) & (absolute < visit.stop))
            if len(act) == 0:
                continue
            cam_act = tuple(c[act] for c in cam)
            _draw(visit, k, absolute[act], fps, (wx[act], wy[act]), cam_act, img, owner, act)
        for k, visit in enumerate(scene.visits):
            _, _, _, rad = visit.path(absolute, fps)
            area = shape_area(class_attributes(visit.class_id)[0]) * (rad / zoom[sl]) ** 2
            counts = (owner == k).sum(axis=(1, 2))
            visible[sl, k] = (counts >= VISIBLE_SHARE * area) & (counts >= 4)
        img *= light[sl][:, None, None, :] * vignette[None, :, :, None]
        img += bank[rng.integers(0, len(bank), size=len(img))]
        frames[sl] = np.clip(img, 0, 255, out=img).astype(np.uint8)
    return frames, visible


def _draw(visit: Visit, k: int, frames: np.ndarray, fps: int,
          world: tuple[np.ndarray, np.ndarray], cam: tuple[np.ndarray, ...],
          img: np.ndarray, owner: np.ndarray, rows: np.ndarray) -> None:
    """Paint ``visit``'s object over ``img[rows]`` and mark it ``k`` in ``owner``.

    Args:
        visit: the object's stay.
        k: its index in the scene.
        frames: absolute frame numbers of ``rows``.
        fps: frames per second.
        world: world coordinates x, y of every pixel of ``rows`` ([A, H, W] each).
        cam: camera offsets x, y, roll and zoom at ``rows``.
        img: the chunk's frames [F, H, W, 3] (float), painted in place.
        owner: the chunk's top object per pixel [F, H, W], updated in place.
        rows: the chunk rows the visit is on.
    """
    shape, _, texture = class_attributes(visit.class_id)
    x, y, angle, radius = visit.path(frames, fps)
    size = img.shape[1]
    # Only the screen box the object can cover in these frames is computed.
    cam_x, cam_y, roll, zoom = cam
    rx, ry = x - size / 2 - cam_x, y - size / 2 - cam_y
    sx = (np.cos(roll) * rx + np.sin(roll) * ry) / zoom + size / 2
    sy = (-np.sin(roll) * rx + np.cos(roll) * ry) / zoom + size / 2
    reach = 1.2 * radius / zoom + 2
    x0, x1 = (int(np.clip(v, 0, size)) for v in (np.floor((sx - reach).min()),
                                                  np.ceil((sx + reach).max()) + 1))
    y0, y1 = (int(np.clip(v, 0, size)) for v in (np.floor((sy - reach).min()),
                                                  np.ceil((sy + reach).max()) + 1))
    if x0 >= x1 or y0 >= y1:
        return
    ddx = world[0][:, y0:y1, x0:x1] - x[:, None, None]
    ddy = world[1][:, y0:y1, x0:x1] - y[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u, v = cos * ddx + sin * ddy, -sin * ddx + cos * ddy
    r = radius[:, None, None]
    inside = _shape_mask(shape, u, v, r)
    period = np.maximum(3.0, r / float(visit.params["period"]))
    paint = texture_paint(texture, np.asarray(visit.params["rgb"]), u, v, period)
    sd = float(visit.params["shade_dir"])
    shade = 1 + float(visit.params["shade"]) * (u * np.cos(sd) + v * np.sin(sd)) / r
    paint *= shade[..., None]
    sub, own = img[rows, y0:y1, x0:x1], owner[rows, y0:y1, x0:x1]
    sub[inside] = paint[inside]
    own[inside] = k
    img[rows, y0:y1, x0:x1], owner[rows, y0:y1, x0:x1] = sub, own


def room_noise(rng: np.random.Generator, seconds: float, rate: int,
               cuts: list[float]) -> np.ndarray:
    """A room's background noise: pinkish, its level drifting and changing at scene ``cuts``."""
    n = int(round(seconds * rate))
    white = rng.normal(0.0, 1.0, size=n).astype(np.float32)
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    tilt = rng.uniform(0.5, 1.2)  # 1/f^tilt power: between pink and brown
    spectrum *= 1.0 / np.maximum(freqs, 20.0) ** (tilt / 2)
    bed = np.fft.irfft(spectrum, n).astype(np.float32)
    bed /= bed.std() + 1e-9
    knots = np.arange(0.0, seconds + 2.0, 2.0)
    levels = np.exp(rng.normal(np.log(0.005), 0.35, size=len(knots)))
    for cut in cuts:  # another room, another level
        levels[knots >= cut] *= np.exp(rng.normal(0, 0.4))
    level = np.interp(np.arange(n) / rate, knots, np.clip(levels, 0.001, 0.02))
    out = bed * level.astype(np.float32)
    if rng.random() < 0.5:  # a fridge or a fan
        t = np.arange(n) / rate
        f0 = rng.uniform(50, 130)
        hum = sum(np.sin(2 * np.pi * h * f0 * t) / h for h in (1, 2, 3))
        out += (rng.uniform(0.0005, 0.003) * hum).astype(np.float32)
    return out


def sound_event(kind: str, rng: np.random.Generator, rate: int) -> np.ndarray:
    """A non-speech sound: ``hum``, ``click``, ``knock``, ``rustle`` or ``squeak`` (peak ~0.3)."""
    if kind == "hum":  # someone humming, a motor
        n = int(rng.uniform(0.4, 1.6) * rate)
        t = np.arange(n) / rate
        f0 = rng.uniform(110, 320) * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))
        phase = 2 * np.pi * np.cumsum(f0) / rate
        wave = sum(np.sin(h * phase) * rng.uniform(0.2, 1.0) / h for h in range(1, 6))
        wave = wave * np.clip(np.sin(np.pi * t / t[-1]), 0, 1) ** 0.5
    elif kind == "click":
        wave = np.zeros(int(0.5 * rate))
        for _ in range(int(rng.integers(1, 4))):
            at, m = int(rng.integers(0, len(wave) // 2)), int(rng.uniform(0.003, 0.015) * rate)
            burst = rng.normal(0, 1, size=m) * np.exp(-np.arange(m) / (0.2 * m))
            wave[at: at + m] += burst
    elif kind == "knock":
        wave = np.zeros(int(rng.uniform(0.4, 1.0) * rate))
        f0, m = rng.uniform(70, 260), int(0.12 * rate)
        t = np.arange(m) / rate
        ring = np.sin(2 * np.pi * f0 * t) * np.exp(-t * rng.uniform(25, 60))
        for j in range(int(rng.integers(1, 4))):
            at = int(j * rng.uniform(0.12, 0.2) * rate)
            wave[at: at + m] += ring[: len(wave) - at]
    elif kind == "rustle":
        n = int(rng.uniform(0.3, 1.2) * rate)
        noise = np.diff(rng.normal(0, 1, size=n + 1))  # high-passed
        env = np.abs(np.interp(np.arange(n), np.linspace(0, n, 9), rng.normal(0, 1, size=9)))
        wave = noise * env
    elif kind == "squeak":  # a toy
        n = int(rng.uniform(0.12, 0.4) * rate)
        t = np.arange(n) / rate
        f = np.linspace(rng.uniform(700, 1400), rng.uniform(900, 2400), n)
        wave = np.sin(2 * np.pi * np.cumsum(f) / rate) * np.sin(np.pi * t / t[-1])
    else:
        raise ValueError(f"sound kind must be one of {list(SOUND_KINDS)}, got {kind!r}")
    wave = np.asarray(wave, np.float32)
    return (0.3 * wave / (np.abs(wave).max() + 1e-9)).astype(np.float32)


def room_response(rng: np.random.Generator, rate: int) -> np.ndarray:
    """A short impulse response (direct sound + exponentially decaying tail) of a room."""
    rt60 = rng.uniform(0.12, 0.5)
    n = int(rt60 * rate)
    tail = rng.normal(0, 1, size=n) * np.exp(-6.9 * np.arange(n) / n)
    ir = tail * rng.uniform(0.05, 0.3) / np.sqrt(np.sum(tail**2) + 1e-9)
    ir[0] = 1.0
    return ir.astype(np.float32)


def reverberate(wave: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """``wave`` convolved with ``ir`` (FFT), as long as both together."""
    n = len(wave) + len(ir) - 1
    size = 1 << (n - 1).bit_length()
    out = np.fft.irfft(np.fft.rfft(wave, size) * np.fft.rfft(ir, size), size)[:n]
    return out.astype(np.float32)


def mix_in(track: np.ndarray, wave: np.ndarray, start: float, rate: int) -> None:
    """Add ``wave`` into ``track`` from ``start`` seconds on (cut at the end)."""
    at = int(round(start * rate))
    part = wave[: max(0, len(track) - at)]
    track[at: at + len(part)] += part


def yuv420p(frames: np.ndarray) -> np.ndarray:
    """RGB frames [F, H, W, 3] as yuv420p planes [F, 3H/2, W] (BT.601, limited range).

    Done here for all frames at once: PyAV's per-frame conversion costs ~0.7 ms a
    frame, more than drawing and encoding it.
    """
    count, h, w, _ = frames.shape
    out = np.empty((count, h * 3 // 2, w), np.uint8)
    for c0 in range(0, count, 256):
        rgb = frames[c0: c0 + 256].astype(np.float32)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
        sub = rgb.reshape(len(rgb), h // 2, 2, w // 2, 2, 3).mean(axis=(2, 4))
        r, g, b = sub[..., 0], sub[..., 1], sub[..., 2]
        cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
        cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
        chroma = np.concatenate([cb, cr], axis=1).reshape(len(rgb), h // 2, w)
        out[c0: c0 + 256, :h] = np.clip(np.rint(y), 0, 255)
        out[c0: c0 + 256, h:] = np.clip(np.rint(chroma), 0, 255)
    return out


def write_av(path: str, frames: np.ndarray, fps: int, audio: np.ndarray, rate: int) -> None:
    """Write one mp4: the video (:func:`pipelines.render.video_codec`) and mono AAC audio.

    Args:
        path: output file.
        frames: uint8 RGB [F, H, W, 3] (H, W even).
        fps: frames per second.
        audio: float mono samples in [-1, 1].
        rate: audio sample rate.

    Raises:
        ValueError: ``audio`` has NaN or infinite samples (the AAC encoder refuses them).
    """
    if not np.isfinite(audio).all():
        raise ValueError("audio has NaN or infinite samples")
    with av.open(path, "w", format="mp4") as container:
        video = add_video_stream(container, fps, int(frames.shape[2]), int(frames.shape[1]),
                                 keyframe_seconds=2.0, reproducible=True)
        # The fast coder without noise substitution/TNS encodes ~3x faster, still clean speech.
        sound = container.add_stream("aac", rate=rate, layout="mono", options={
            "aac_coder": "fast", "aac_pns": "0", "aac_tns": "0"})
        sound.bit_rate = 48000
        wave = np.ascontiguousarray(np.clip(audio, -1, 1), np.float32)
        sent = 0
        planes = yuv420p(frames)
        for f, plane in enumerate(planes):
            picture = av.VideoFrame.from_ndarray(plane, format="yuv420p")
            picture.pts, picture.time_base = f, Fraction(1, fps)  # unset: random timestamps
            for packet in video.encode(picture):
                container.mux(packet)
            until = min(len(wave), int(round((f + 1) * rate / fps)))
            while sent + AUDIO_FRAME <= until or (f == len(frames) - 1 and sent < len(wave)):
                chunk = wave[sent: sent + AUDIO_FRAME]
                piece = av.AudioFrame.from_ndarray(chunk[None, :].copy(), format="fltp",
                                                   layout="mono")
                piece.sample_rate, piece.pts, piece.time_base = rate, sent, Fraction(1, rate)
                for packet in sound.encode(piece):
                    container.mux(packet)
                sent += len(chunk)
        for stream in (video, sound):
            for packet in stream.encode():
                container.mux(packet)
