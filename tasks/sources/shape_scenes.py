"""Compositional scenes (shape x colour x size x grid position) drawn with PIL, and their captions.

A scene is 1-2 objects in distinct cells of a 3x3 grid. The caption is a pure function of the
scene (objects listed in reading order), so two scenes with the same caption are the same
scene up to the seeded jitter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 170, 50),
    "cyan": (40, 210, 220),
    "blue": (35, 70, 220),
    "purple": (140, 50, 190),
    "pink": (245, 130, 190),
    "white": (245, 245, 245),
    "brown": (130, 80, 40),
}
SIZES = ("small", "large")
# Reading order of the 3x3 grid: index = row * 3 + column.
POSITIONS = (
    "top left",
    "top center",
    "top right",
    "center left",
    "center",
    "center right",
    "bottom left",
    "bottom center",
    "bottom right",
)
# Radius as a fraction of a grid cell's side.
_RADIUS = {"small": 0.24, "large": 0.44}
_SUPERSAMPLE = 4  # draw large, then downscale: antialiased edges without an AA rasteriser


@dataclass(frozen=True, order=True)
class SceneObject:
    """One drawn object; `position` indexes POSITIONS."""

    position: int
    shape: str
    colour: str
    size: str

    def describe(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} in the {POSITIONS[self.position]}"


@dataclass(frozen=True)
class Scene:
    """Objects sorted by grid position, so equal scenes compare (and caption) equal."""

    objects: tuple[SceneObject, ...]

    def caption(self) -> str:
        return " and ".join(obj.describe() for obj in self.objects)


def sample_scene(rng: np.random.Generator) -> Scene:
    """A uniformly random scene of one or two objects in distinct grid cells."""
    n_objects = int(rng.integers(1, 3))
    cells = rng.choice(len(POSITIONS), size=n_objects, replace=False)
    colour_names = list(COLOURS)
    objects = [
        SceneObject(
            position=int(cell),
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            colour=colour_names[int(rng.integers(len(colour_names)))],
            size=SIZES[int(rng.integers(len(SIZES)))],
        )
        for cell in cells
    ]
    return Scene(tuple(sorted(objects)))


def _polygon(cx: float, cy: float, r: float, n: int, phase: float, inner: float = 1.0) -> list:
    """Vertices of a regular n-gon (inner < 1 alternates radii: a star)."""
    points = []
    steps = n * 2 if inner < 1.0 else n
    for k in range(steps):
        radius = r * (inner if inner < 1.0 and k % 2 else 1.0)
        angle = phase + 2 * math.pi * k / steps
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _draw_object(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill):
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(1, round(r * 0.35)))
    elif shape == "square":
        s = r * 0.85  # a square of the same radius looks bigger than the circle
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + r * 0.15, r, 3, -math.pi / 2), fill=fill)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4, -math.pi / 2), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r, 5, -math.pi / 2, inner=0.45), fill=fill)
    elif shape == "cross":
        t = r * 0.32
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def draw_scene(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Render `scene` at `size` x `size` with seeded jitter.

    Background shade, object centre (within its cell), radius and colour are jittered, so two
    renders of one scene differ while the caption stays true. Per-pixel noise was left out: it
    tripled PNG size and encode time and made near-duplicate hashing of copies noisier.
    """
    big = size * _SUPERSAMPLE
    cell = big / 3
    bg = tuple(int(v) for v in rng.integers(25, 70, size=3))
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        row, col = divmod(obj.position, 3)
        r = cell * _RADIUS[obj.size] * rng.uniform(0.9, 1.1)
        slack = max(0.0, cell / 2 - r) * 0.6  # keep the object inside its own cell
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack)
        base = np.array(COLOURS[obj.colour])
        fill = tuple(int(v) for v in np.clip(base + rng.integers(-12, 13, size=3), 0, 255))
        _draw_object(draw, obj.shape, cx, cy, r, fill)
    # Box-filter reduction is the exact average of each supersampled block (and fast).
    return img.reduce(_SUPERSAMPLE)
