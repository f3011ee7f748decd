"""Random ``synth`` scenes: rooms, cameras, lights and primitives, drawn from one generator per image."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mtpeft_bench.tasks.synth.scene import PRIMITIVE_KINDS, Camera, Light, Primitive, Room, Scene, Texture


SPLIT_CODES = {"train": 0, "val": 1}


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: independent of every other image, so subsets regenerate identically."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def _color(rng: np.random.Generator, lo: float = 0.1, hi: float = 0.95) -> tuple[float, float, float]:
    return tuple(float(x) for x in rng.uniform(lo, hi, 3))


def _texture(rng: np.random.Generator, scale: tuple[float, float]) -> Texture:
    return Texture(_color(rng), _color(rng), float(rng.uniform(*scale)), float(rng.uniform(0, 1)))


def _random_primitive(rng: np.random.Generator, kind: str, x: float, z: float) -> Primitive:
    if kind == "sphere":
        r = rng.uniform(0.25, 0.6)
        lift = rng.uniform(0.1, 0.7) if rng.uniform() < 0.25 else 0.0
        return Primitive(kind, (x, r + lift, z), (r,), texture=_texture(rng, (2, 5)))
    if kind == "box":
        size = (rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.7), rng.uniform(0.2, 0.6))
        return Primitive(kind, (x, size[1], z), size, yaw=float(rng.uniform(0, math.pi / 2)),
                         texture=_texture(rng, (0.15, 0.35)))
    if kind == "cylinder":
        return Primitive(kind, (x, 0.0, z), (rng.uniform(0.15, 0.45), rng.uniform(0.4, 1.4)),
                         texture=_texture(rng, (0.08, 0.25)))
    return Primitive(kind, (x, 0.0, z), (rng.uniform(0.2, 0.5), rng.uniform(0.5, 1.5)),
                     texture=_texture(rng, (0.2, 0.5)))


def _footprint(prim: Primitive) -> float:
    """Radius of a vertical cylinder around the primitive's axis that contains it."""
    if prim.kind == "box":
        return math.hypot(prim.size[0], prim.size[2])
    return prim.size[0]


def sample_scene(rng: np.random.Generator) -> Scene:
    """A random room, camera, light and up to 5 non-overlapping primitives in front of the camera.

    A primitive that finds no free spot in 30 tries is dropped (rare: the default dataset's 1,200
    scenes all hold 1-5 primitives). The camera stands near the +z wall, 1.0-1.7 m high, turned by
    up to 25 degrees and pitched down by 0-30 degrees, so the ceiling shows in about a quarter of
    the images.
    """
    width, depth, height = rng.uniform(4, 7), rng.uniform(5, 8), rng.uniform(2.6, 3.4)
    room = Room(width, depth, height,
                floor=_texture(rng, (0.3, 0.8)), wall=_texture(rng, (0.15, 0.6)),
                ceiling=Texture(_color(rng, 0.75, 0.95), (0, 0, 0), 1.0))
    cam_pos = (rng.uniform(-width / 4, width / 4), rng.uniform(1.0, 1.7), depth / 2 - rng.uniform(0.3, 0.8))
    camera = Camera(cam_pos, yaw=math.radians(rng.uniform(-25, 25)), pitch=math.radians(rng.uniform(0, 30)))
    light = Light((rng.uniform(-width / 3, width / 3), height - 0.15, rng.uniform(-depth / 3, depth / 3)),
                  intensity=float(rng.uniform(1.3, 1.9)), ambient=float(rng.uniform(0.2, 0.35)), radius=0.2)

    forward = np.array([-math.sin(camera.yaw), -math.cos(camera.yaw)])  # horizontal (x, z)
    right = np.array([math.cos(camera.yaw), -math.sin(camera.yaw)])
    half_tan = math.tan(math.radians(camera.hfov_deg) / 2)
    prims: list[Primitive] = []
    for _ in range(int(rng.integers(1, 6))):
        kind = PRIMITIVE_KINDS[int(rng.integers(len(PRIMITIVE_KINDS)))]
        for _attempt in range(30):
            s = rng.uniform(1.5, 5.5)
            x, z = np.array(cam_pos)[[0, 2]] + s * forward + rng.uniform(-0.8, 0.8) * s * half_tan * right
            prim = _random_primitive(rng, kind, float(x), float(z))
            if _fits(prim, prims, room, cam_pos):
                prims.append(prim)
                break
    return Scene(room, camera, light, tuple(prims))


def _fits(prim: Primitive, others: Sequence[Primitive], room: Room, cam_pos: tuple[float, float, float]) -> bool:
    """Inside the room (5 cm margin), >= 15 cm from other footprints, >= 50 cm from the camera."""
    x, z = prim.center[0], prim.center[2]
    r = _footprint(prim)
    if abs(x) > room.width / 2 - r - 0.05 or abs(z) > room.depth / 2 - r - 0.05:
        return False
    if math.hypot(x - cam_pos[0], z - cam_pos[2]) < r + 0.5:
        return False
    return all(math.hypot(x - o.center[0], z - o.center[2]) >= r + _footprint(o) + 0.15 for o in others)

