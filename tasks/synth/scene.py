"""The description of a ``synth`` scene: camera, room, light, primitives and their textures, and the
label tables (surface classes, object parts) that every renderer output refers to."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


CLASS_NAMES = ("floor", "wall", "ceiling", "sphere", "box", "cylinder", "cone")
PART_NAMES = ("room", "sphere", "box_top", "box_side", "cylinder_cap", "cylinder_side", "cone")
PRIMITIVE_KINDS = ("sphere", "box", "cylinder", "cone")

FLOOR, WALL, CEILING = 0, 1, 2
CLASS_OF_KIND = {"sphere": 3, "box": 4, "cylinder": 5, "cone": 6}

HFOV_DEG = 60.0  # fixed, so that apparent size is a depth cue as with a real camera

# Box-like faces (box and room) are coded axis * 2 + side: 0 x-, 1 x+, 2 y-, 3 y+, 4 z-, 5 z+.
ROOM_FACE_CLASS = np.array([WALL, WALL, FLOOR, CEILING, WALL, WALL])


@dataclass(frozen=True)
class Camera:
    """Pinhole camera. ``position`` (x, y, z) in metres; ``yaw``/``pitch`` in radians (pitch > 0 looks down)."""

    position: tuple[float, float, float]
    yaw: float = 0.0
    pitch: float = 0.0
    hfov_deg: float = HFOV_DEG


@dataclass(frozen=True)
class Texture:
    """Two colours (RGB in [0, 1]) of the class's pattern, its period in metres (or count) and phase."""

    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    scale: float = 0.5
    phase: float = 0.0


@dataclass(frozen=True)
class Primitive:
    """A solid standing in the room.

    Attributes:
        kind: ``sphere``, ``box``, ``cylinder`` or ``cone``.
        center: sphere: its centre; box: its centre; cylinder / cone: the centre of the base disk.
        size: sphere ``(r,)``; box half-extents ``(hx, hy, hz)``; cylinder / cone ``(r, height)``.
        yaw: rotation about the vertical axis (boxes), radians.
    """

    kind: str
    center: tuple[float, float, float]
    size: tuple[float, ...]
    yaw: float = 0.0
    texture: Texture = field(default_factory=lambda: Texture((0.8, 0.3, 0.2), (0.9, 0.9, 0.9)))


@dataclass(frozen=True)
class Light:
    """Point light (soft-edged: five samples on a horizontal cross of ``radius``) plus ambient term."""

    position: tuple[float, float, float]
    intensity: float = 1.0
    ambient: float = 0.3
    radius: float = 0.0
    falloff: float = 4.0  # distance (m) at which the light's strength has halved


@dataclass(frozen=True)
class Room:
    """Box room ``[-width/2, width/2] x [0, height] x [-depth/2, depth/2]`` with its three textures."""

    width: float
    depth: float
    height: float
    floor: Texture = Texture((0.55, 0.45, 0.35), (0.35, 0.28, 0.2), 0.5)
    wall: Texture = Texture((0.8, 0.8, 0.75), (0.65, 0.7, 0.75), 0.3)
    ceiling: Texture = Texture((0.9, 0.9, 0.88), (0.9, 0.9, 0.88), 1.0)


@dataclass(frozen=True)
class Scene:
    room: Room
    camera: Camera
    light: Light
    primitives: tuple[Primitive, ...] = ()

