"""Pose pictures as the official SteadyDancer pipeline draws them (``preprocess/pose/script/util.py``).

Per frame, on a black canvas ``supersample`` × the output size (the official ``single.mp4`` is 2× the
generation size):

1. 17 limbs (OpenPose ``limbSeq`` without the ear–shoulder pairs) as filled ``cv2.ellipse2Poly`` polygons,
   semi-minor axis 4 px, in the 18-colour OpenPose palette; the official code then multiplies the whole
   canvas by 0.6. Filled polygons overwrite (no blending) on a black canvas, so drawing each limb directly
   in ``floor(0.6 · colour)`` gives the same pixels without touching the whole canvas.
2. 18 joints as filled circles, radius 4, full colour.
3. Both hands: 20 edges as ``cv2.line`` thickness 2 in ``hsv(e/20, 1, 1)``, then the 21 joints as circles
   radius 4 in (0, 0, 255). The official code draws a hand point only when its integer pixel position is
   > 0 on both axes; that rule is kept (on top of visibility).
4. No face, no feet.

Palette ``"steadydancer"`` (default) reproduces the official pictures, which are drawn with the palette
read as BGR and converted to RGB, so every colour is R↔B swapped compared with the usual OpenPose picture
(neck→right-shoulder limb blue, hand joints red). ``"openpose"`` gives the standard colours.

The supersampled canvas is then reduced to the output size: ``"area"`` (cv2 INTER_AREA, a 2×2 box for
supersample 2; fast) or ``"bicubic"`` (PIL bicubic, what the official loader applies to the pose JPEGs
before the model; slower). ``downscale=None`` returns the supersampled canvas itself (as the official
``single.mp4`` frames, before video encoding). Output: uint8 RGB ``(T, H, W, 3)``.
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Sequence

import cv2
import numpy as np
from PIL import Image

from .keypoints import PersonPose, PoseFrame, check_sequence

# OpenPose limbSeq (0-based) in drawing order; colour i belongs to limb i.
BODY_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
OPENPOSE_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
HAND_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
    (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)
HAND_JOINT_COLOR = (0, 0, 255)
LIMB_SEMI_MINOR = 4
JOINT_RADIUS = 4
HAND_LINE_THICKNESS = 2
HAND_JOINT_RADIUS = 4
LIMB_DIM = 0.6
# Pixel coordinates beyond this are treated as not drawable (cv2 takes int32 points; such points come only
# from the official mode's garbage and lie far off the canvas anyway).
_MAX_PIXEL = 1 << 20

Palette = Literal["steadydancer", "openpose"]
Downscale = Literal["area", "bicubic"]


def _hsv_edge_color(index: int) -> np.ndarray:
    """matplotlib ``hsv_to_rgb([index / 20, 1, 1]) * 255`` (the official hand-edge colour), same float ops."""
    h, s, v = index / float(len(HAND_EDGES)), 1.0, 1.0
    i = int(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i % 6]
    return np.array(rgb) * 255


def _palette(palette: Palette) -> dict[str, list]:
    if palette not in ("steadydancer", "openpose"):
        raise ValueError(f"render: expected palette 'steadydancer' or 'openpose', got {palette!r}")
    order = slice(None, None, -1) if palette == "steadydancer" else slice(None)
    dimmed = (np.array(OPENPOSE_COLORS, np.uint8) * LIMB_DIM).astype(np.uint8)
    return {
        "limb": [tuple(int(c) for c in color[order]) for color in dimmed],
        "joint": [tuple(color[order]) for color in OPENPOSE_COLORS],
        "hand_edge": [_hsv_edge_color(e)[order] for e in range(len(HAND_EDGES))],
        "hand_joint": tuple(HAND_JOINT_COLOR[order]),
    }


def _drawable(points: np.ndarray, visible: np.ndarray) -> np.ndarray:
    return visible & np.all(np.abs(points) < _MAX_PIXEL, axis=-1)


def _draw_people(canvas: np.ndarray, people: Sequence[PersonPose], colors: dict[str, list]) -> tuple[int, int, int, int]:
    """Draw onto ``canvas`` in place; returns a conservative pixel box ``(x0, y0, x1, y1)`` (inclusive,
    clipped to the canvas) around everything drawn. Coordinates go through Python floats with the official
    expressions (same IEEE operations), so the pixels match the official ones."""
    height, width = canvas.shape[:2]
    scale = np.array([float(width), float(height)])
    bodies = []
    drawn = []  # pixel positions of every drawn point: every limb, joint and hand stroke lies near them
    for person in people:
        points = person.body * scale
        ok = _drawable(points, person.body_visible)
        bodies.append((points.tolist(), ok.tolist()))
        drawn.append(points[ok])
    # Limb-major over people, as the official loop (only matters where people overlap).
    for limb, (a, b) in enumerate(BODY_LIMBS):
        for points, ok in bodies:
            if not (ok[a] and ok[b]):
                continue
            (y0, x0), (y1, x1) = points[a], points[b]  # official naming: Y is the image x axis
            mean_x, mean_y = (x0 + x1) / 2, (y0 + y1) / 2
            length = ((x0 - x1) ** 2 + (y0 - y1) ** 2) ** 0.5
            angle = math.degrees(math.atan2(x0 - x1, y0 - y1))
            polygon = cv2.ellipse2Poly((int(mean_y), int(mean_x)), (int(length / 2), LIMB_SEMI_MINOR), int(angle),
                                       0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, colors["limb"][limb])
    for joint in range(len(OPENPOSE_COLORS)):
        for points, ok in bodies:
            if ok[joint]:
                x, y = int(points[joint][0]), int(points[joint][1])
                cv2.circle(canvas, (x, y), JOINT_RADIUS, colors["joint"][joint], thickness=-1)
    for person in people:
        for hand, visible in zip(person.hands * scale, person.hand_visible):
            ok = _drawable(hand, visible)
            pixels = np.zeros(hand.shape, np.int64)
            pixels[ok] = hand[ok].astype(np.int64)  # truncation toward zero, as int()
            ok &= np.all(pixels > 0, axis=-1)
            if not ok.any():
                continue
            drawn.append(pixels[ok].astype(np.float64))
            pixel_list, ok_list = pixels.tolist(), ok.tolist()
            for edge, (a, b) in enumerate(HAND_EDGES):
                if ok_list[a] and ok_list[b]:
                    cv2.line(canvas, pixel_list[a], pixel_list[b], colors["hand_edge"][edge], thickness=HAND_LINE_THICKNESS)
            for point, point_ok in zip(pixel_list, ok_list):
                if point_ok:
                    cv2.circle(canvas, point, HAND_JOINT_RADIUS, colors["hand_joint"], thickness=-1)
    points = np.concatenate(drawn) if drawn else np.zeros((0, 2))
    if not len(points):
        return 0, 0, -1, -1
    # A limb polygon stays within its end points' box ± (semi-minor axis + 2 px of integer truncation),
    # circles within ± radius, hand lines within ± thickness.
    margin = max(LIMB_SEMI_MINOR, JOINT_RADIUS, HAND_JOINT_RADIUS, HAND_LINE_THICKNESS) + 4
    low, high = np.floor(points.min(axis=0)) - margin, np.ceil(points.max(axis=0)) + margin
    return (int(max(low[0], 0)), int(max(low[1], 0)), int(min(high[0], width - 1)), int(min(high[1], height - 1)))


def render_frame(
    frame: PoseFrame,
    width: int,
    height: int,
    supersample: int = 2,
    palette: Palette = "steadydancer",
    downscale: Downscale | None = "area",
) -> np.ndarray:
    """One frame's picture, ``(height, width, 3)`` uint8 RGB (``supersample`` × that with ``downscale=None``).
    Keypoints are normalised, so they are drawn stretched to this canvas whatever the frame's own size."""
    check_render_args(width, height, supersample, downscale)
    return _render(frame, width, height, supersample, _palette(palette), downscale)


def check_render_args(width: int, height: int, supersample: int, downscale: str | None) -> None:
    for name, value in (("width", width), ("height", height), ("supersample", supersample)):
        if isinstance(value, bool) or int(value) != value or value <= 0:
            raise ValueError(f"render: expected a positive integer {name}, got {value!r}")
    if downscale not in ("area", "bicubic", None):
        raise ValueError(f"render: expected downscale 'area', 'bicubic' or None, got {downscale!r}")


_canvases = threading.local()


def _scratch_canvas(height: int, width: int) -> np.ndarray:
    """A black canvas reused per thread (allocating and faulting in a fresh 1664×960×3 buffer per frame costs
    as much as drawing); ``_render`` blacks out what it drew before handing it to the next frame."""
    canvas = getattr(_canvases, "canvas", None)
    if canvas is None or canvas.shape != (height, width, 3):
        canvas = _canvases.canvas = np.zeros((height, width, 3), np.uint8)
    return canvas


def _render(frame: PoseFrame, width: int, height: int, supersample: int, colors: dict[str, list],
            downscale: str | None) -> np.ndarray:
    if downscale is None or supersample == 1:
        canvas = np.zeros((height * supersample, width * supersample, 3), np.uint8)
        _draw_people(canvas, frame.people, colors)
        return canvas
    canvas = _scratch_canvas(height * supersample, width * supersample)
    bx0, by0, bx1, by1 = _draw_people(canvas, frame.people, colors)
    if downscale == "bicubic":
        # PIL's bicubic is not exactly shift-invariant on tall images, so it always reduces the whole canvas.
        out = np.array(Image.fromarray(canvas).resize((width, height), Image.Resampling.BICUBIC))
    else:
        out = np.zeros((height, width, 3), np.uint8)
    if bx1 < bx0 or by1 < by0:
        return out
    # INTER_AREA with an integer factor is a local supersample² box, so reducing only the drawn region
    # (padded and aligned to the supersample grid) gives the same pixels as the whole, mostly black, canvas.
    pad = 4 * supersample
    x0, y0 = max(0, (bx0 - pad) // supersample), max(0, (by0 - pad) // supersample)
    x1 = min(width, -(-(bx1 + 1 + pad) // supersample))
    y1 = min(height, -(-(by1 + 1 + pad) // supersample))
    region = canvas[y0 * supersample:y1 * supersample, x0 * supersample:x1 * supersample]
    if downscale == "area":
        out[y0:y1, x0:x1] = cv2.resize(region, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    region[...] = 0
    return out


def render_frames(
    frames: Sequence[PoseFrame],
    width: int,
    height: int,
    supersample: int = 2,
    palette: Palette = "steadydancer",
    downscale: Downscale | None = "area",
    threads: int = 2,
) -> np.ndarray:
    """All frames as ``(T, height, width, 3)`` uint8 RGB (see ``render_frame``). OpenCV releases the GIL
    while drawing, so ``threads`` workers render frames in parallel."""
    frames = check_sequence(frames, "render frames")
    check_render_args(width, height, supersample, downscale)
    colors = _palette(palette)
    out_h, out_w = (height, width) if downscale is not None and supersample > 1 else (height * supersample, width * supersample)
    out = np.empty((len(frames), out_h, out_w, 3), np.uint8)

    def work(index: int) -> None:
        out[index] = _render(frames[index], width, height, supersample, colors, downscale)

    if threads > 1 and len(frames) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(work, range(len(frames))))
    else:
        for index in range(len(frames)):
            work(index)
    return out
