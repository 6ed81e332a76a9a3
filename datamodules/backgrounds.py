"""Procedural image content for synthetic faces: backgrounds behind the face and occluders in front of it.

Everything here is a pure NumPy/OpenCV function of a `numpy.random.Generator`, so a sample's pictures
depend only on its own generator. Images are float32 (H, W, 3) RGB in [0, 1]; coordinates follow
`renderers.camera` (x right, y down, pixel ``(row i, col j)`` centred at ``(j + 0.5, i + 0.5)``).

Backgrounds mix a smooth base (linear or radial colour gradient) with one texture (soft blobs, stripes,
multi-scale value noise, or flat rectangles like furniture edges), so the network cannot use "the face
is the only structured thing in the picture". Some colours are drawn from skin tones on purpose: real
backgrounds (wood, walls, other people) are sometimes skin-coloured, and the skin posterior must not be
a free face mask.

Occluders imitate what covers faces in photos: a hand (skin-coloured palm and fingers), sunglasses on
the eyes, a bar (microphone, pen, strand of hair) and a flat object (phone, paper, cup). They are
placed relative to the face's 68 landmarks and drawn with anti-aliased edges; `draw_occluder` returns
the coverage so that callers and tests know exactly which pixels changed.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

BACKGROUND_KINDS = ("blobs", "stripes", "noise", "rectangles")
OCCLUDER_KINDS = ("hand", "sunglasses", "bar", "object")

# RGB skin tones in [0, 1], light to dark; occluding hands and some backgrounds interpolate between them.
_SKIN_TONES = np.array(
    [[0.96, 0.80, 0.69], [0.90, 0.70, 0.58], [0.78, 0.57, 0.44], [0.62, 0.42, 0.30], [0.42, 0.27, 0.18]],
    dtype=np.float32,
)
# Drawing resolution multiplier: OpenCV draws anti-aliased lines but fills ellipses and polygons with
# hard edges, so shapes are drawn larger and area-downsampled for soft, sub-pixel-accurate borders.
_SUPERSAMPLE = 4


def random_colour(rng: np.random.Generator, skin_probability: float = 0.15) -> np.ndarray:
    """(3,) float32 RGB: a skin tone with ``skin_probability``, else a random colour of random brightness."""
    if rng.random() < skin_probability:
        return skin_tone(rng)
    colour = rng.random(3) * rng.uniform(0.3, 1.0)
    return colour.astype(np.float32)


def skin_tone(rng: np.random.Generator) -> np.ndarray:
    """(3,) float32 RGB between two neighbouring tones of the light-to-dark palette, slightly jittered."""
    k = rng.integers(0, len(_SKIN_TONES) - 1)
    w = rng.random()
    tone = (1.0 - w) * _SKIN_TONES[k] + w * _SKIN_TONES[k + 1]
    return np.clip(tone * rng.uniform(0.85, 1.1) + rng.normal(0.0, 0.02, 3), 0.0, 1.0).astype(np.float32)


def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, normalised to [-1, 1] along the longer side: (H, W) x and y."""
    scale = 2.0 / max(height, width)
    y = (np.arange(height, dtype=np.float32) + 0.5 - height / 2.0) * scale
    x = (np.arange(width, dtype=np.float32) + 0.5 - width / 2.0) * scale
    return np.meshgrid(x, y)


def gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A linear (random direction) or radial (random centre) blend between two random colours."""
    x, y = _pixel_grid(height, width)
    if rng.random() < 0.6:
        angle = rng.uniform(0.0, 2.0 * math.pi)
        t = (x * math.cos(angle) + y * math.sin(angle) + 1.5) / 3.0
    else:
        cx, cy = rng.uniform(-1.0, 1.0, 2)
        t = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / rng.uniform(1.0, 2.5)
    t = np.clip(t, 0.0, 1.0)[..., None]
    return (1.0 - t) * random_colour(rng) + t * random_colour(rng)


def blobs(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Soft Gaussian blobs of random colours: (H, W, 3) colour and (H, W) opacity."""
    x, y = _pixel_grid(height, width)
    colour = np.zeros((height, width, 3), np.float32)
    weight = np.zeros((height, width), np.float32)
    for _ in range(rng.integers(2, 7)):
        cx, cy = rng.uniform(-1.1, 1.1, 2)
        sx, sy = rng.uniform(0.1, 0.5, 2)
        w = np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))
        colour += w[..., None] * random_colour(rng)
        weight += w
    opacity = np.clip(weight, 0.0, 1.0)
    return colour / np.maximum(weight, 1e-6)[..., None], opacity


def stripes(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Straight or wavy stripes between two colours, random period and direction."""
    x, y = _pixel_grid(height, width)
    angle = rng.uniform(0.0, math.pi)
    u = x * math.cos(angle) + y * math.sin(angle)
    if rng.random() < 0.4:
        v = -x * math.sin(angle) + y * math.cos(angle)
        u = u + rng.uniform(0.02, 0.15) * np.sin(v * rng.uniform(2.0, 8.0))
    wave = np.sin(u * 2.0 * math.pi / rng.uniform(0.05, 0.6) + rng.uniform(0.0, 2.0 * math.pi))
    # A steep sigmoid turns the sine into stripes with sharp (but not aliased) edges.
    t = 1.0 / (1.0 + np.exp(-wave * rng.uniform(1.0, 12.0)))
    t = t[..., None].astype(np.float32)
    colour = (1.0 - t) * random_colour(rng) + t * random_colour(rng)
    return colour, np.ones((height, width), np.float32)


def value_noise(rng: np.random.Generator, height: int, width: int, octaves: int = 4) -> np.ndarray:
    """(H, W, 3) float32 multi-scale colour noise in [0, 1]: random grids upsampled bicubically."""
    out = np.zeros((height, width, 3), np.float32)
    total = 0.0
    cells = int(rng.integers(2, 6))
    for octave in range(octaves):
        amplitude = 0.5**octave
        grid = rng.random((cells, cells, 3)).astype(np.float32)
        out += amplitude * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        total += amplitude
        cells *= 2
    return np.clip(out / total, 0.0, 1.0)


def noise_texture(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Value noise tinted between two colours (marble, foliage, blurred crowds)."""
    noise = value_noise(rng, height, width)
    t = noise.mean(-1, keepdims=True)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    colour = (1.0 - t) * random_colour(rng) + t * random_colour(rng)
    colour = colour + rng.uniform(0.0, 0.3) * (noise - 0.5)
    return np.clip(colour, 0.0, 1.0), np.ones((height, width), np.float32)


def rectangles(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned and slightly rotated flat rectangles (doors, shelves, windows)."""
    colour = np.zeros((height, width, 3), np.float32)
    opacity = np.zeros((height, width), np.float32)
    for _ in range(rng.integers(1, 5)):
        w, h = rng.uniform(0.15, 0.8, 2) * (width, height)
        centre = rng.uniform(0.0, 1.0, 2) * (width, height)
        alpha = _rotated_rectangle(height, width, centre, (w, h), rng.normal(0.0, 8.0))
        opacity = np.maximum(opacity, alpha)
        colour = colour * (1.0 - alpha[..., None]) + alpha[..., None] * random_colour(rng)
    return colour, opacity


_TEXTURES = {"blobs": blobs, "stripes": stripes, "noise": noise_texture, "rectangles": rectangles}


def random_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 RGB background in [0, 1]: a gradient with one texture over it at random strength."""
    base = gradient(rng, height, width)
    kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    colour, opacity = _TEXTURES[kind](rng, height, width)
    alpha = (rng.uniform(0.3, 1.0) * opacity)[..., None]
    image = (1.0 - alpha) * base + alpha * colour
    # Camera defocus: the background is usually behind the focal plane.
    sigma = rng.uniform(0.0, 2.0) * max(height, width) / 224.0
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


BACKGROUND_STYLES = ("procedural", "indoor", "mixed")
"""``procedural``: `random_background`; ``indoor``: `indoor_background`; ``mixed``: either, half the time each."""


def indoor_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1]: an out-of-focus room behind a portrait.

    A wall lit unevenly by a soft light, a floor or a ceiling edge at a random slant, a bright window or lamp,
    and a few darker pieces of furniture, door frames or shelves, all strongly defocused, as the background
    of a photo taken at portrait distance. Unlike `random_background` there are no saturated patterns: the
    colours are muted (paint, wood, daylight).
    """
    x, y = _pixel_grid(height, width)
    wall = np.clip(random_colour(rng, skin_probability=0.0) * 0.35 + rng.uniform(0.3, 0.75), 0.0, 1.0)
    wall = wall * np.array([1.0, rng.uniform(0.92, 1.02), rng.uniform(0.8, 1.0)], np.float32)
    cx, cy = rng.uniform(-1.5, 1.5, 2)
    falloff = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / rng.uniform(0.8, 3.0))
    image = wall * (rng.uniform(0.45, 0.8) + rng.uniform(0.2, 0.6) * falloff)[..., None]
    # Floor (below) or ceiling (above) edge.
    angle = rng.normal(0.0, 0.25)
    level = rng.uniform(0.3, 0.9) * rng.choice([-1.0, 1.0])
    side = (y - level - x * math.tan(angle)) * np.sign(level) > 0
    other = np.clip(random_colour(rng, skin_probability=0.3) * rng.uniform(0.4, 0.9), 0.0, 1.0)
    image = np.where(side[..., None], other * (0.7 + 0.3 * falloff[..., None]), image)
    for _ in range(rng.integers(1, 4)):
        w, h = rng.uniform(0.15, 0.6, 2) * (width, height)
        centre = rng.uniform(0.0, 1.0, 2) * (width, height)
        alpha = _rotated_rectangle(height, width, centre, (w, h), rng.normal(0.0, 3.0))[..., None]
        colour = np.clip(random_colour(rng, skin_probability=0.2) * rng.uniform(0.2, 0.7), 0.0, 1.0)
        colour = 0.5 * colour + 0.5 * colour.mean()  # paint and wood, not posters
        image = image * (1.0 - alpha) + alpha * colour
    if rng.random() < 0.6:
        w, h = rng.uniform(0.2, 0.5, 2) * (width, height)
        centre = rng.uniform(0.0, 1.0, 2) * (width, height)
        alpha = _rotated_rectangle(height, width, centre, (w, h), rng.normal(0.0, 3.0))[..., None]
        daylight = np.array([rng.uniform(0.85, 1.0), rng.uniform(0.9, 1.0), 1.0], np.float32)
        image = image * (1.0 - alpha) + alpha * daylight
    sigma = rng.uniform(1.5, 4.0) * max(height, width) / 224.0
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigma)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def draw_background(rng: np.random.Generator, height: int, width: int, style: str = "procedural") -> np.ndarray:
    """(H, W, 3) float32 background of the given style (`BACKGROUND_STYLES`)."""
    if style == "procedural":
        return random_background(rng, height, width)
    if style == "indoor":
        return indoor_background(rng, height, width)
    if style == "mixed":
        return indoor_background(rng, height, width) if rng.random() < 0.5 else random_background(rng, height, width)
    raise ValueError(f"unknown background style {style!r}; choose one of {BACKGROUND_STYLES}")


# ---------------------------------------------------------------------------------------------- occluders


def _draw_supersampled(height: int, width: int, draw) -> np.ndarray:
    """Run ``draw(canvas, scale)`` on a uint8 canvas ``_SUPERSAMPLE`` times larger; return (H, W) coverage.

    ``draw`` receives the canvas and the factor to multiply pixel coordinates by; OpenCV's integer
    coordinates address pixel centres, so a point (x, y) in our convention is drawn at (x s - 0.5, y s - 0.5)
    (see `_to_canvas`).
    """
    canvas = np.zeros((height * _SUPERSAMPLE, width * _SUPERSAMPLE), np.uint8)
    draw(canvas, _SUPERSAMPLE)
    small = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


def _to_canvas(points: np.ndarray, scale: int) -> np.ndarray:
    """(..., 2) image points -> int32 canvas points (pixel-centre convention shifted to OpenCV's)."""
    return np.round(np.asarray(points, np.float64) * scale - 0.5).astype(np.int32)


def _ellipse(height: int, width: int, centre, axes, angle_deg: float) -> np.ndarray:
    def draw(canvas: np.ndarray, s: int) -> None:
        cv2.ellipse(
            canvas,
            tuple(int(v) for v in _to_canvas(centre, s)),
            (max(1, int(round(axes[0] * s))), max(1, int(round(axes[1] * s)))),
            float(angle_deg),
            0.0,
            360.0,
            255,
            -1,
        )

    return _draw_supersampled(height, width, draw)


def _rotated_rectangle(height: int, width: int, centre, size, angle_deg: float) -> np.ndarray:
    corners = cv2.boxPoints(((float(centre[0]), float(centre[1])), (float(size[0]), float(size[1])), float(angle_deg)))

    def draw(canvas: np.ndarray, s: int) -> None:
        cv2.fillPoly(canvas, [_to_canvas(corners, s)], 255)

    return _draw_supersampled(height, width, draw)


def _capsule(height: int, width: int, start, end, thickness: float) -> np.ndarray:
    """A thick line with round caps from ``start`` to ``end`` (fingers, bars)."""

    def draw(canvas: np.ndarray, s: int) -> None:
        a, b = _to_canvas(start, s), _to_canvas(end, s)
        cv2.line(canvas, tuple(int(v) for v in a), tuple(int(v) for v in b), 255, max(1, int(round(thickness * s))))

    return _draw_supersampled(height, width, draw)


def _shaded_fill(rng: np.random.Generator, height: int, width: int, colour: np.ndarray, texture: float) -> np.ndarray:
    """(H, W, 3) a colour with a soft lighting gradient and some surface texture, so occluders are not flat."""
    x, y = _pixel_grid(height, width)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    shade = 1.0 + rng.uniform(0.05, 0.3) * (x * math.cos(angle) + y * math.sin(angle))
    fill = colour * shade[..., None]
    if texture > 0:
        fill = fill + texture * (value_noise(rng, height, width, octaves=3) - 0.5)
    return np.clip(fill, 0.0, 1.0).astype(np.float32)


def _face_frame(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and size (larger side of the landmark box) of the face, in pixels."""
    low, high = landmarks.min(0), landmarks.max(0)
    return (low + high) / 2.0, float((high - low).max())


# Occluder painters: (rng, height, width, (68, 2) landmarks) -> ((H, W) coverage in [0, 1], (H, W, 3) fill colour).


def _hand(rng: np.random.Generator, height: int, width: int, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, size = _face_frame(landmarks)
    # The palm comes from below or from a side and covers the mouth, a cheek or the chin.
    target = landmarks[rng.choice([8, 57, 3, 13, 48, 54, 30])] + rng.normal(0.0, 0.08 * size, 2)
    direction = rng.uniform(0.25 * math.pi, 0.75 * math.pi) + (
        0.0 if rng.random() < 0.6 else rng.choice([-0.5, 0.5]) * math.pi
    )
    to_wrist = np.array([math.cos(direction), math.sin(direction)])  # from the covered point to the wrist
    palm_length, palm_width = size * rng.uniform(0.35, 0.5), size * rng.uniform(0.25, 0.35)
    palm_centre = target + to_wrist * palm_length * 0.3
    angle = math.degrees(direction) + 90.0
    alpha = _ellipse(height, width, palm_centre, (palm_width / 2, palm_length / 2), angle)
    side = np.array([-to_wrist[1], to_wrist[0]])
    finger_base = palm_centre - to_wrist * palm_length * 0.35
    for k in range(4):
        offset = (k - 1.5) / 1.5 * palm_width * 0.38
        start = finger_base + side * offset
        length = palm_length * rng.uniform(0.5, 0.75) * (1.0 - 0.15 * abs(k - 1.5))
        bend = rng.normal(0.0, 0.15)
        tip_dir = -to_wrist * math.cos(bend) + side * math.sin(bend)
        alpha = np.maximum(alpha, _capsule(height, width, start, start + tip_dir * length, palm_width * 0.2))
    return alpha, _shaded_fill(rng, height, width, skin_tone(rng), texture=0.05)


def _sunglasses(
    rng: np.random.Generator, height: int, width: int, landmarks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    left, right = landmarks[36:42].mean(0), landmarks[42:48].mean(0)
    _, size = _face_frame(landmarks)
    span = right - left
    # Interocular distance collapses in profile; the face size keeps the lenses a sensible size.
    lens = max(float(np.linalg.norm(span)) * 0.42, 0.12 * size) * rng.uniform(0.9, 1.2)
    angle = math.degrees(math.atan2(span[1], span[0])) if np.linalg.norm(span) > 1e-3 else 0.0
    shape = rng.uniform(0.6, 0.9)
    alpha = np.maximum(
        _ellipse(height, width, left, (lens, lens * shape), angle),
        _ellipse(height, width, right, (lens, lens * shape), angle),
    )
    bar = max(1.0, 0.04 * size)
    alpha = np.maximum(alpha, _capsule(height, width, left, right, bar))
    colour = np.full(3, rng.uniform(0.02, 0.2), np.float32) + rng.uniform(0.0, 0.1, 3).astype(np.float32)
    return alpha, _shaded_fill(rng, height, width, colour, texture=0.02)


def _bar(rng: np.random.Generator, height: int, width: int, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centre, size = _face_frame(landmarks)
    through = centre + rng.normal(0.0, 0.2 * size, 2)
    angle = rng.uniform(0.0, math.pi)
    half = np.array([math.cos(angle), math.sin(angle)]) * size * rng.uniform(0.5, 1.5)
    thickness = size * rng.uniform(0.05, 0.2)
    alpha = _capsule(height, width, through - half, through + half, thickness)
    return alpha, _shaded_fill(rng, height, width, random_colour(rng, skin_probability=0.0), texture=0.1)


def side_shape(
    rng: np.random.Generator,
    height: int,
    width: int,
    landmarks: np.ndarray,
    reach: tuple[float, float] = (0.35, 0.6),
    rectangle_probability: float = 0.5,
) -> np.ndarray:
    """(H, W) coverage of a rectangle or an ellipse (30-60% of the face's size) whose centre lies ``reach`` face
    sizes from the face's centre in a random direction: anchored at a side of the face, so that it covers a part
    of it, not all of it."""
    centre, size = _face_frame(landmarks)
    direction = rng.uniform(0.0, 2.0 * math.pi)
    position = centre + np.array([math.cos(direction), math.sin(direction)]) * size * rng.uniform(*reach)
    extent = size * rng.uniform(0.3, 0.6, 2)
    if rng.random() < rectangle_probability:
        return _rotated_rectangle(height, width, position, extent, rng.uniform(-30.0, 30.0))
    return _ellipse(height, width, position, extent / 2.0, rng.uniform(0.0, 180.0))


def _object(rng: np.random.Generator, height: int, width: int, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    alpha = side_shape(rng, height, width, landmarks)
    return alpha, _shaded_fill(rng, height, width, random_colour(rng, skin_probability=0.0), texture=0.15)


_OCCLUDERS = {"hand": _hand, "sunglasses": _sunglasses, "bar": _bar, "object": _object}


def draw_occluder(
    image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator, kind: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one occluder over a face.

    image: (H, W, 3) float32 RGB in [0, 1]; landmarks: (68, 2) pixel positions of the face; kind: one of
    `OCCLUDER_KINDS`, or None to draw one at random. Returns the new image (a copy) and the (H, W) float32
    coverage in [0, 1]; pixels with zero coverage are returned unchanged.
    """
    if kind is None:
        kind = OCCLUDER_KINDS[rng.integers(len(OCCLUDER_KINDS))]
    if kind not in _OCCLUDERS:
        raise ValueError(f"unknown occluder kind {kind!r}; choose one of {OCCLUDER_KINDS}")
    height, width = image.shape[:2]
    return paint_over(image, *_OCCLUDERS[kind](rng, height, width, np.asarray(landmarks, np.float64)))


def paint_over(image: np.ndarray, alpha: np.ndarray, fill: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``fill`` (H, W, 3) over a copy of ``image`` with coverage ``alpha`` (H, W); returns (image, alpha).
    Pixels with zero coverage are copied unchanged, bit for bit."""
    out = image.copy()
    drawn = alpha > 0
    a = alpha[drawn][:, None]
    out[drawn] = (1.0 - a) * image[drawn] + a * fill[drawn]
    return out, alpha
