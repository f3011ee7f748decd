"""Surfaces of ``synth``: outward normals, part labels and texture colours at ray hit points p float[M, 3]."""

from __future__ import annotations

import math

import numpy as np

from mtpeft_bench.tasks.synth.geometry import box_face_normals, rotation_y
from mtpeft_bench.tasks.synth.scene import Primitive, Room, Texture


def primitive_normals(prim: Primitive, p: np.ndarray, sub: np.ndarray) -> np.ndarray:
    """Outward unit normals float[M, 3] (world frame) of ``prim`` at its surface points ``p``."""
    c = np.asarray(prim.center)
    if prim.kind == "sphere":
        return (p - c) / prim.size[0]
    if prim.kind == "box":
        return box_face_normals(sub) @ rotation_y(prim.yaw).T
    if prim.kind == "cylinder":
        radial = (p - c) * np.array([1.0, 0.0, 1.0])
        n = radial / np.linalg.norm(radial, axis=1, keepdims=True).clip(1e-12)
        n[sub == 1] = (0.0, 1.0, 0.0)
        n[sub == 2] = (0.0, -1.0, 0.0)
        return n
    # cone: gradient of x^2 + z^2 - (r/h)^2 (apex_y - y)^2
    r, height = prim.size
    q = p - c
    n = np.stack([q[:, 0], (r / height) ** 2 * (height - q[:, 1]), q[:, 2]], axis=1)
    n /= np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)
    n[sub == 1] = (0.0, -1.0, 0.0)
    return n


def primitive_parts(prim: Primitive, sub: np.ndarray) -> np.ndarray:
    """Part ids int[M] (indices into :data:`PART_NAMES`) of the hit sub-surfaces."""
    if prim.kind == "sphere":
        return np.full(sub.shape, 1)
    if prim.kind == "box":
        return np.where(sub == 3, 2, 3)  # y+ face is the top
    if prim.kind == "cylinder":
        return np.where(sub == 0, 5, 4)
    return np.full(sub.shape, 6)


def _mix(tex: Texture, pattern: np.ndarray) -> np.ndarray:
    """Colour float[M, 3]: color_a where pattern is 0, color_b where 1 (pattern in [0, 1])."""
    a, b = np.asarray(tex.color_a), np.asarray(tex.color_b)
    return a + (b - a) * pattern[:, None]


def _bands(u: np.ndarray) -> np.ndarray:
    """0/1 alternating unit-width bands of the coordinate ``u``."""
    return np.floor(u).astype(np.int64) % 2


def primitive_albedo(prim: Primitive, p: np.ndarray, sub: np.ndarray) -> np.ndarray:
    """Texture colour float[M, 3] of ``prim`` at surface points ``p`` (pattern fixed by the kind).

    Patterns only use coordinates that vary along the surface: a coordinate that is constant on
    a face (e.g. the box-frame x on an x face) would flip a checker at random from rounding noise.
    """
    tex = prim.texture
    q = p - np.asarray(prim.center)
    if prim.kind == "sphere":  # longitude segments ("beach ball"), scale = number of segment pairs
        u = (np.arctan2(q[:, 2], q[:, 0]) / (2 * math.pi) + tex.phase) * 2 * round(tex.scale)
        return _mix(tex, _bands(u))
    if prim.kind == "box":  # checker over the two in-plane axes of each face, in the box frame
        cells = np.floor((q @ rotation_y(prim.yaw) + np.asarray(prim.size)) / tex.scale).astype(np.int64)
        cells[np.arange(sub.size), sub // 2] = 0
        return _mix(tex, cells.sum(axis=1) % 2)
    if prim.kind == "cylinder":  # horizontal rings on the side, concentric rings on the caps
        radial = np.hypot(q[:, 0], q[:, 2])
        u = np.where(sub == 0, q[:, 1] / tex.scale + tex.phase, radial / tex.scale)
        return _mix(tex, _bands(u))
    u = np.arctan2(q[:, 2], q[:, 0]) / (2 * math.pi) * 4 + q[:, 1] / tex.scale + tex.phase  # cone: spiral
    return _mix(tex, _bands(u))


def room_albedo(room: Room, p: np.ndarray, face: np.ndarray) -> np.ndarray:
    """Texture colour float[M, 3] of the room at points ``p`` on faces ``face``."""
    out = np.empty((face.size, 3))
    floor, ceiling = face == 2, face == 3
    walls = ~(floor | ceiling)
    f = room.floor
    out[floor] = _mix(f, (_bands(p[floor, 0] / f.scale) + _bands(p[floor, 2] / f.scale)) % 2)
    out[ceiling] = _mix(room.ceiling, np.zeros(int(ceiling.sum())))
    # vertical stripes along each wall's horizontal coordinate (z on x-walls, x on z-walls)
    along = np.where(face[walls] < 2, p[walls, 2], p[walls, 0])
    out[walls] = _mix(room.wall, _bands(along / room.wall.scale + room.wall.phase))
    return out


def grain(p: np.ndarray) -> np.ndarray:
    """Multiplicative brightness variation float[M] in ~[0.93, 1.07], a fixed function of world position."""
    return 1.0 + 0.025 * (np.sin(7.1 * p[:, 0] + 2.3 * p[:, 1]) + np.sin(5.3 * p[:, 2] - 6.7 * p[:, 1] + 1.0)
                          + np.sin(9.7 * (p[:, 0] + p[:, 2])))

