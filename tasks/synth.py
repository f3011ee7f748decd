"""``synth``: procedural indoor scenes with exact ground truth — mtbench's embedded default dataset.

Each image is a ray-cast view from a pinhole camera inside a box-shaped room (floor, four walls,
ceiling) holding up to 5 primitives (spheres, boxes with a random yaw, cylinders, cones) that stand on
the floor (a few spheres float). Surfaces carry procedural textures chosen by class (floor:
checkerboard, walls: vertical stripes, ceiling: plain, sphere: longitude segments, box: 3-D
checker, cylinder: rings, cone: spiral) in random colours, lit by one point light (soft shadows
from five light samples, quadratic fall-off) plus ambient light. Every task's ground truth is
computed from the same rays, so the RGB image alone carries the cues for all of them, and the
targets are exact at each pixel centre (the image is not anti-aliased, so it agrees pixel for
pixel with the labels).

Tasks and conventions
---------------------
- ``semseg``: class of the surface: :data:`CLASS_NAMES` (every pixel labelled).
- ``parts``: object part: :data:`PART_NAMES`; 0 = not an object (room). A box's bottom and a
  cylinder's/cone's base touch the floor and are never visible (a floating sphere shows its
  underside, which is part of ``sphere``).
- ``depth``: z-depth in metres, the distance along the optical axis (not along the ray).
- ``normals``: unit surface normals in the **camera frame: x to the image right, y to the image
  top, z towards the viewer** (out of the screen; OpenGL convention). Visible surfaces face the
  camera (``n . d < 0`` for the viewing ray d), so ``n_z > 0`` near the image centre; a horizontal
  flip negates ``n_x``; RGB display is (n + 1) / 2.
- ``sal``: 1 on primitives, 0 on the room.
- ``edge``: 1-px boundaries where the (class, part, object) label of 4-neighbouring pixels
  changes, drawn on the nearer of the two pixels. Primitives are convex and the room is seen from
  inside, so every depth discontinuity is such a boundary (an object's outline); creases inside
  one label (wall-wall corners) are not edges.

World frame: y up, floor at y = 0, room ``[-W/2, W/2] x [0, H] x [-D/2, D/2]``. Camera yaw 0
looks along -z, positive pitch looks down.

On disk the dataset uses the NYUD_MT layout (:mod:`mtpeft_bench.tasks.nyud_layout`) plus
``saliency/`` and ``parts/`` folders and a ``synth.json`` manifest; labels are stored as k+1 so
that NYUD's "0 = unlabelled, k -> k-1" rule applies unchanged. Images are drawn from a numpy
Generator seeded by (seed, split, index), so any subset regenerates bit-identically; the folder
name carries :data:`GENERATOR_VERSION`, bumped whenever the generator's output changes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import register_dataset
from mtpeft_bench.tasks.base import DatasetConfig, DatasetPlugin, TaskSpec
from mtpeft_bench.tasks.specs import depth_task, edge_task, normals_task, saliency_task, segmentation_task


GENERATOR_VERSION = 1

CLASS_NAMES = ("floor", "wall", "ceiling", "sphere", "box", "cylinder", "cone")
PART_NAMES = ("room", "sphere", "box_top", "box_side", "cylinder_cap", "cylinder_side", "cone")
PRIMITIVE_KINDS = ("sphere", "box", "cylinder", "cone")

FLOOR, WALL, CEILING = 0, 1, 2
CLASS_OF_KIND = {"sphere": 3, "box": 4, "cylinder": 5, "cone": 6}
SPLIT_CODES = {"train": 0, "val": 1}

HFOV_DEG = 60.0  # fixed, so that apparent size is a depth cue as with a real camera
EPS = 1e-5  # smallest accepted ray parameter; camera rays have |d| >= 1, shadow rays |d| ~ metres

# Box-like faces (box and room) are coded axis * 2 + side: 0 x-, 1 x+, 2 y-, 3 y+, 4 z-, 5 z+.
ROOM_FACE_CLASS = np.array([WALL, WALL, FLOOR, CEILING, WALL, WALL])


# -- scene description -----------------------------------------------------------------------

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


# -- camera ----------------------------------------------------------------------------------

def camera_rotation(yaw: float, pitch: float) -> np.ndarray:
    """float64[3, 3] whose columns are the camera's right, up and back axes in world coordinates."""
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    forward = np.array([-sy * cp, -sp, -cy * cp])
    right = np.array([cy, 0.0, -sy])
    up = np.cross(right, forward)
    return np.stack([right, up, -forward], axis=1)


def camera_rays(camera: Camera, height: int, width: int) -> np.ndarray:
    """World directions float64[height * width, 3] through the pixel centres, row-major.

    The directions are not normalised: their camera-frame z component is -1, so a hit at ray
    parameter t has z-depth exactly t.
    """
    focal = (width / 2) / math.tan(math.radians(camera.hfov_deg) / 2)
    x = (np.arange(width) + 0.5 - width / 2) / focal
    y = -(np.arange(height) + 0.5 - height / 2) / focal
    xx, yy = np.meshgrid(x, y)
    d_cam = np.stack([xx, yy, -np.ones_like(xx)], axis=-1).reshape(-1, 3)
    return d_cam @ camera_rotation(camera.yaw, camera.pitch).T


# -- ray intersections: o float[3] or [N, 3], d float[N, 3] -> t float[N] (inf = miss), sub int[N]

def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of float[..., 3] arrays (broadcasting); faster than einsum for 3 columns."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _rot_y(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _nearest_root(a: np.ndarray, half_b: np.ndarray, c: np.ndarray, valid0: Any = True,
                  valid1: Any = True) -> np.ndarray:
    """Smallest root t > EPS of a t^2 + 2 half_b t + c = 0 among the roots marked valid (inf if none).

    ``valid0``/``valid1`` are callables t -> bool[N] (or True) for the smaller/larger root.
    """
    disc = half_b * half_b - a * c
    sq = np.sqrt(np.maximum(disc, 0.0))
    # the cancellation-free form of the two roots; it also gives the single root when a == 0
    q = -(half_b + np.copysign(sq, half_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        r0 = q / a
        r1 = c / q
    lo, hi = np.minimum(r0, r1), np.maximum(r0, r1)
    ok_lo = (disc >= 0) & (lo > EPS) & (valid0(lo) if callable(valid0) else True)
    ok_hi = (disc >= 0) & (hi > EPS) & (valid1(hi) if callable(valid1) else True)
    return np.where(ok_lo, lo, np.where(ok_hi, hi, np.inf))


def intersect_sphere(prim: Primitive, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    oc = o - np.asarray(prim.center)
    r = prim.size[0]
    t = _nearest_root(_dot(d, d), _dot(oc, d), _dot(oc, oc) - r * r)
    return t, np.zeros(t.shape, np.int64)


def _slab(lo: np.ndarray, hi: np.ndarray, q: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-axis entry/exit parameters of the ray q + t d through the slabs lo <= x <= hi."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t_lo, t_hi = (lo - q) * inv, (hi - q) * inv
    return np.minimum(t_lo, t_hi), np.maximum(t_lo, t_hi)


def intersect_box(prim: Primitive, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rot = _rot_y(prim.yaw)
    q = (o - np.asarray(prim.center)) @ rot  # world -> box frame (rot^T applied to row vectors)
    dl = d @ rot
    h = np.asarray(prim.size)
    enter, exit_ = _slab(-h, h, q, dl)
    axis = np.argmax(enter, axis=1)
    t_near = np.take_along_axis(enter, axis[:, None], axis=1)[:, 0]
    t_far = exit_.min(axis=1)
    t = np.where((t_near <= t_far) & (t_near > EPS), t_near, np.inf)
    # a ray moving towards -axis enters through the + face
    going_neg = np.take_along_axis(dl, axis[:, None], axis=1)[:, 0] < 0
    return t, axis * 2 + going_neg


def intersect_cylinder(prim: Primitive, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertical cylinder; sub 0 = side, 1 = top cap, 2 = bottom cap."""
    base = np.asarray(prim.center)
    r, height = prim.size
    p = o - base
    px, py, pz = p[..., 0], p[..., 1], p[..., 2]
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]

    def within_height(t: np.ndarray) -> np.ndarray:
        y = py + t * dy
        return (y >= 0) & (y <= height)

    t_side = _nearest_root(dx * dx + dz * dz, px * dx + pz * dz, px * px + pz * pz - r * r,
                           within_height, within_height)
    caps = []
    for y_cap in (height, 0.0):
        with np.errstate(divide="ignore", invalid="ignore"):  # horizontal rays: inf * 0 -> nan -> miss
            t_cap = (y_cap - py) / dy
            inside = (px + t_cap * dx) ** 2 + (pz + t_cap * dz) ** 2 <= r * r
        caps.append(np.where(inside & (t_cap > EPS), t_cap, np.inf))
    stacked = np.stack([t_side, *caps], axis=1)
    sub = np.argmin(stacked, axis=1)
    return stacked.min(axis=1), sub


def intersect_cone(prim: Primitive, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertical cone, apex up; sub 0 = lateral surface, 1 = base disk."""
    base = np.asarray(prim.center)
    r, height = prim.size
    k2 = (r / height) ** 2
    p = o - (base + np.array([0.0, height, 0.0]))  # relative to the apex
    px, py, pz = p[..., 0], p[..., 1], p[..., 2]
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]

    def on_lower_nappe(t: np.ndarray) -> np.ndarray:
        y = py + t * dy
        return (y <= 0) & (y >= -height)

    a = dx * dx + dz * dz - k2 * dy * dy
    t_side = _nearest_root(a, px * dx + pz * dz - k2 * py * dy, px * px + pz * pz - k2 * py * py,
                           on_lower_nappe, on_lower_nappe)
    with np.errstate(divide="ignore", invalid="ignore"):  # horizontal rays: inf * 0 -> nan -> miss
        t_base = (-height - py) / dy
        inside = (px + t_base * dx) ** 2 + (pz + t_base * dz) ** 2 <= r * r
    t_base = np.where(inside & (t_base > EPS), t_base, np.inf)
    stacked = np.stack([t_side, t_base], axis=1)
    return stacked.min(axis=1), np.argmin(stacked, axis=1)


INTERSECT = {"sphere": intersect_sphere, "box": intersect_box, "cylinder": intersect_cylinder, "cone": intersect_cone}


def intersect_room(room: Room, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit point of rays from ``o`` inside the room; sub = face code (axis * 2 + side)."""
    lo = np.array([-room.width / 2, 0.0, -room.depth / 2])
    hi = np.array([room.width / 2, room.height, room.depth / 2])
    _, exit_ = _slab(lo, hi, o, d)
    axis = np.argmin(exit_, axis=1)
    t = np.take_along_axis(exit_, axis[:, None], axis=1)[:, 0]
    going_pos = np.take_along_axis(d, axis[:, None], axis=1)[:, 0] > 0
    return t, axis * 2 + going_pos


# -- surfaces: normals, labels, textures at hit points p float[M, 3] ----------------------------

def _face_normals(sub: np.ndarray) -> np.ndarray:
    """Outward normals float[M, 3] of box faces coded axis * 2 + side."""
    n = np.zeros((sub.size, 3))
    n[np.arange(sub.size), sub // 2] = np.where(sub % 2 == 1, 1.0, -1.0)
    return n


def primitive_normals(prim: Primitive, p: np.ndarray, sub: np.ndarray) -> np.ndarray:
    """Outward unit normals float[M, 3] (world frame) of ``prim`` at its surface points ``p``."""
    c = np.asarray(prim.center)
    if prim.kind == "sphere":
        return (p - c) / prim.size[0]
    if prim.kind == "box":
        return _face_normals(sub) @ _rot_y(prim.yaw).T
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
        cells = np.floor((q @ _rot_y(prim.yaw) + np.asarray(prim.size)) / tex.scale).astype(np.int64)
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


def _grain(p: np.ndarray) -> np.ndarray:
    """Multiplicative brightness variation float[M] in ~[0.93, 1.07], a fixed function of world position."""
    return 1.0 + 0.025 * (np.sin(7.1 * p[:, 0] + 2.3 * p[:, 1]) + np.sin(5.3 * p[:, 2] - 6.7 * p[:, 1] + 1.0)
                          + np.sin(9.7 * (p[:, 0] + p[:, 2])))


# -- rendering -------------------------------------------------------------------------------

def bounding_sphere(prim: Primitive) -> tuple[np.ndarray, float]:
    """Centre float[3] and radius of a sphere that contains ``prim``."""
    c = np.asarray(prim.center, dtype=float)
    if prim.kind == "sphere":
        return c, prim.size[0]
    if prim.kind == "box":
        return c, float(np.linalg.norm(prim.size))
    r, height = prim.size
    return c + np.array([0.0, height / 2, 0.0]), math.hypot(r, height / 2)


def _may_hit(prim: Primitive, o: np.ndarray, d: np.ndarray, t_max: float = np.inf, pad: float = 0.0) -> np.ndarray:
    """bool[N]: rays that meet the bounding sphere of ``prim``, radius grown by ``pad``, for some 0 < t < t_max.

    A cheap test that lets the exact (costlier) intersection run only on the few rays that can
    hit the primitive.
    """
    c, r = bounding_sphere(prim)
    r += pad
    oc = o - c
    a = _dot(d, d)
    half_b = _dot(oc, d)
    cc = _dot(oc, oc) - r * r
    disc = half_b * half_b - a * cc
    sq = np.sqrt(np.maximum(disc, 0.0))
    return (disc >= 0) & (-half_b + sq > 0) & (-half_b - sq < t_max * a)


def _subset(o: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The origins of the masked rays (``o`` is one shared origin float[3] or one per ray float[N, 3])."""
    return o if o.ndim == 1 else o[mask]


def _cast(scene: Scene, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of every ray: t float[N], owner int[N] (0 = room, i = primitive i-1), sub int[N]."""
    t, sub = intersect_room(scene.room, o, d)
    owner = np.zeros(t.shape, np.int64)
    for i, prim in enumerate(scene.primitives, start=1):
        idx = np.flatnonzero(_may_hit(prim, o, d))
        if idx.size == 0:
            continue
        t_i, sub_i = INTERSECT[prim.kind](prim, _subset(o, idx), d[idx])
        closer = t_i < t[idx]
        idx, t_i, sub_i = idx[closer], t_i[closer], sub_i[closer]
        t[idx], sub[idx], owner[idx] = t_i, sub_i, i
    return t, owner, sub


def _light_samples(light: Light) -> np.ndarray:
    """float[S, 3] light positions: the centre plus four points on a horizontal cross of ``radius``."""
    c = np.asarray(light.position)
    if light.radius <= 0:
        return c[None]
    r = light.radius
    offsets = np.array([[0, 0, 0], [r, 0, 0], [-r, 0, 0], [0, 0, r], [0, 0, -r]], dtype=float)
    return c + offsets


def _visibility(scene: Scene, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Share float[N] of light samples that each point sees (only primitives cast shadows: the room is convex)."""
    light = scene.light
    origin = p + 1e-4 * n  # step off the surface so a point does not shadow itself
    # Segments towards any light sample stay within light.radius of the segment towards the
    # centre, so one padded bounding-sphere test per primitive finds every possible occlusion.
    candidates = [np.flatnonzero(_may_hit(prim, origin, np.asarray(light.position) - origin, 1.0, light.radius))
                  for prim in scene.primitives]
    samples = _light_samples(light)
    visible = np.zeros(len(p))
    for sample in samples:
        blocked = np.zeros(len(p), bool)
        for prim, idx in zip(scene.primitives, candidates, strict=True):
            if idx.size:
                t, _ = INTERSECT[prim.kind](prim, origin[idx], sample - origin[idx])
                blocked[idx[t < 1.0]] = True
        visible += ~blocked
    return visible / len(samples)


def _shade(scene: Scene, p: np.ndarray, n: np.ndarray, albedo: np.ndarray) -> np.ndarray:
    """Lambertian + ambient colour float[N, 3] in [0, 1], gamma-encoded for display."""
    light = scene.light
    to_light = np.asarray(light.position) - p
    dist = np.sqrt(_dot(to_light, to_light))
    lambert = np.clip(_dot(n, to_light) / dist, 0.0, None)
    direct = light.intensity * lambert / (1.0 + (dist / light.falloff) ** 2)
    lit = np.flatnonzero(direct > 0)  # surfaces facing away from the light need no shadow rays
    direct[lit] *= _visibility(scene, p[lit], n[lit])
    # texture colours are display (gamma-encoded) values: light them in linear space, then re-encode
    linear = (albedo * _grain(p)[:, None]) ** 2.2 * (light.ambient + direct)[:, None]
    return np.clip(linear, 0.0, 1.0) ** (1 / 2.2)


def boundary_edges(label: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """float32[H, W] {0, 1}: where ``label`` (int[H, W]) differs between 4-neighbours, the nearer pixel.

    Marking only one pixel of each differing pair keeps the edges 1 px thin; the nearer one is the
    occluding side, where an edge detector should fire (ties go to the left / upper pixel).
    """
    edge = np.zeros(label.shape, bool)
    for axis in (0, 1):
        a = [slice(None), slice(None)]
        b = [slice(None), slice(None)]
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        differ = label[a] != label[b]
        first_nearer = depth[a] <= depth[b]
        edge[a] |= differ & first_nearer
        edge[b] |= differ & ~first_nearer
    return edge.astype(np.float32)


def render_scene(scene: Scene, height: int, width: int) -> dict[str, np.ndarray]:
    """Ray-cast ``scene`` at height x width pixels.

    Returns:
        ``image`` float32[H, W, 3] in [0, 1]; ``depth`` float32[H, W] z-depth (m); ``normals``
        float32[H, W, 3] unit, camera frame (module docstring); ``semseg`` / ``parts`` /
        ``instance`` uint8[H, W] (class, part, 0 = room or i = primitive i-1); ``sal`` and
        ``edge`` float32[H, W] in {0, 1}.
    """
    cam = scene.camera
    origin = np.asarray(cam.position, dtype=float)
    d = camera_rays(cam, height, width)
    t, owner, sub = _cast(scene, origin, d)
    if not np.isfinite(t).all():
        raise ValueError("some camera rays leave the room: is the camera inside it?")
    p = origin + t[:, None] * d

    normal = np.empty_like(p)
    semseg = np.empty(t.shape, np.uint8)
    parts = np.zeros(t.shape, np.uint8)
    albedo = np.empty_like(p)
    room = owner == 0
    normal[room] = -_face_normals(sub[room])  # the room is seen from inside
    semseg[room] = ROOM_FACE_CLASS[sub[room]]
    albedo[room] = room_albedo(scene.room, p[room], sub[room])
    for i, prim in enumerate(scene.primitives, start=1):
        m = owner == i
        if m.any():
            normal[m] = primitive_normals(prim, p[m], sub[m])
            semseg[m] = CLASS_OF_KIND[prim.kind]
            parts[m] = primitive_parts(prim, sub[m])
            albedo[m] = primitive_albedo(prim, p[m], sub[m])

    image = _shade(scene, p, normal, albedo)
    normal_cam = normal @ camera_rotation(cam.yaw, cam.pitch)  # R^T n for row vectors
    normal_cam /= np.linalg.norm(normal_cam, axis=1, keepdims=True)
    hw = (height, width)
    depth = t.reshape(hw).astype(np.float32)
    semseg, parts, instance = semseg.reshape(hw), parts.reshape(hw), owner.reshape(hw).astype(np.uint8)
    label = (instance.astype(np.int64) * 8 + parts) * 8 + semseg
    return {
        "image": image.reshape(height, width, 3).astype(np.float32),
        "depth": depth,
        "normals": normal_cam.reshape(height, width, 3).astype(np.float32),
        "semseg": semseg,
        "parts": parts,
        "instance": instance,
        "sal": (semseg >= CLASS_OF_KIND["sphere"]).astype(np.float32),
        "edge": boundary_edges(label, depth),
    }


# -- random scenes ---------------------------------------------------------------------------

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


# -- dataset generation ------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthConfig(DatasetConfig):
    """Options of the ``synth`` dataset (``--set data.<key>=<value>``).

    Attributes:
        num_train: number of training images.
        num_val: number of validation images.
        height: image height in pixels (also the native ``image_size``).
        width: image width in pixels.
        seed: seed of the scene generator; different seeds give different datasets.
    """

    num_train: int = 1000
    num_val: int = 200
    height: int = 96
    width: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        limits = {"num_train": (1, 10_000_000), "num_val": (1, 10_000_000), "height": (16, 4096),
                  "width": (16, 4096), "seed": (0, 2**63 - 1)}
        for key, (lo, hi) in limits.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"synth {key} must be an integer, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"synth {key} must be between {lo} and {hi}, got {value}")

    def counts(self) -> dict[str, int]:
        return {"train": self.num_train, "val": self.num_val}

    def key(self) -> str:
        """Folder name of this configuration's cache: changes with the generator version and every option."""
        return f"g{GENERATOR_VERSION}-{self.num_train}+{self.num_val}-{self.height}x{self.width}-seed{self.seed}"


def sample_id(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: independent of every other image, so subsets regenerate identically."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def generate_sample(config: SynthConfig, split: str, index: int) -> dict[str, np.ndarray]:
    """Render image ``index`` of ``split`` (arrays of :func:`render_scene`)."""
    return render_scene(sample_scene(sample_rng(config.seed, split, index)), config.height, config.width)


SYNTH_FOLDERS = ("images", "segmentation", "parts", "saliency", "depth", "normals", "edge", "gt_sets")
MANIFEST = "synth.json"


def write_sample(folder: Path, sid: str, s: dict[str, np.ndarray]) -> None:
    """Write one rendered sample into the NYUD_MT-style ``folder`` (labels stored as k+1)."""
    from PIL import Image

    rgb = np.round(s["image"] * 255).astype(np.uint8)
    # 4:4:4 chroma: the default 4:2:0 subsampling would smear colour edges that the labels keep sharp
    Image.fromarray(rgb).save(folder / "images" / f"{sid}.jpg", quality=95, subsampling=0)
    Image.fromarray(s["semseg"] + np.uint8(1)).save(folder / "segmentation" / f"{sid}.png")
    Image.fromarray(s["parts"] + np.uint8(1)).save(folder / "parts" / f"{sid}.png")
    Image.fromarray((s["sal"] * 255).astype(np.uint8)).save(folder / "saliency" / f"{sid}.png")
    for name, key in (("depth", "depth"), ("normals", "normals"), ("edge", "edge")):
        with open(folder / name / f"{sid}.npy", "wb") as f:
            np.save(f, s[key].astype(np.float32))


def manifest_for(config: SynthConfig) -> dict[str, Any]:
    return {
        "dataset": "synth",
        "generator_version": GENERATOR_VERSION,
        "config": asdict(config),
        "counts": config.counts(),
        "classes": {"semseg": list(CLASS_NAMES), "parts": list(PART_NAMES)},
        "storage": "NYUD_MT layout; segmentation/parts PNG store class k as k+1; saliency PNG 0/255; "
                   "depth metres (z-depth); normals camera frame x right, y up, z towards the viewer",
        "created_by": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]]),
    }


def manifest_matches(folder: Path, config: SynthConfig) -> bool:
    try:
        found = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return found.get("generator_version") == GENERATOR_VERSION and found.get("config") == asdict(config)


def generate_dataset(folder: Path, config: SynthConfig, progress: bool = True, workers: int | None = None) -> None:
    """Render every image of ``config`` into ``folder`` (which must exist and be empty).

    Args:
        workers: processes rendering in parallel (default: one per available core, at most 8,
            on Linux and for 64 images or more). Every file depends only on its own (seed, split,
            index), so the output is the same for any number of workers.
    """
    for name in SYNTH_FOLDERS:
        (folder / name).mkdir()
    jobs = [(split, i) for split, n in config.counts().items() for i in range(n)]
    workers = _default_workers(len(jobs)) if workers is None else max(1, int(workers))
    bar = _progress(len(jobs), f"synth: generating {len(jobs)} images into {folder.parent}", enabled=progress)
    try:
        if workers == 1:
            for job in jobs:
                bar.update(_render_chunk((folder, config, [job])))
        else:
            import multiprocessing

            chunks = [(folder, config, jobs[k:k + 16]) for k in range(0, len(jobs), 16)]
            # fork, like torch's DataLoader workers: spawn would re-run an unguarded user script
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for done in pool.imap_unordered(_render_chunk, chunks):
                    bar.update(done)
    finally:
        bar.close()
    for split, n in config.counts().items():
        (folder / "gt_sets" / f"{split}.txt").write_text("".join(sample_id(split, i) + "\n" for i in range(n)))
    (folder / MANIFEST).write_text(json.dumps(manifest_for(config), indent=2, sort_keys=True) + "\n")


def _render_chunk(args: tuple[Path, SynthConfig, list[tuple[str, int]]]) -> int:
    """Render and write the (split, index) jobs of one chunk; returns how many were written."""
    folder, config, jobs = args
    for split, i in jobs:
        write_sample(folder, sample_id(split, i), generate_sample(config, split, i))
    return len(jobs)


def _default_workers(num_jobs: int) -> int:
    if sys.platform != "linux" or num_jobs < 64:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def ensure_dataset(folder: Path, config: SynthConfig, progress: bool = True) -> Path:
    """Make ``folder`` hold the dataset of ``config``: reuse it if its manifest matches, else generate.

    Generation writes into a temporary sibling folder that is renamed into place at the end, so a
    killed run never leaves a half-written dataset behind under the final name.

    Raises:
        UserError: ``folder`` holds something else (another configuration or unrelated files).
    """
    folder = Path(folder).expanduser()
    if manifest_matches(folder, config):
        return folder
    if (folder / MANIFEST).is_file():
        raise UserError(f"{folder} holds a synth dataset made with other settings or generator version; "
                        "delete it or choose another --data-root")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"{folder} exists and is not a synth dataset; choose an empty or new --data-root")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        generate_dataset(tmp, config, progress)
        try:
            os.replace(tmp, folder)  # atomic; replaces an empty folder, fails on a non-empty one
        except OSError:
            if not manifest_matches(folder, config):  # not a concurrent run that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        print(desc, file=sys.stderr)
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, mininterval=0.5, leave=True)


def default_cache_root() -> Path:
    """``$MTBENCH_CACHE``, else ``$XDG_CACHE_HOME/mtbench``, else ``~/.cache/mtbench``."""
    if os.environ.get("MTBENCH_CACHE"):
        return Path(os.environ["MTBENCH_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "mtbench"
    return Path.home() / ".cache" / "mtbench"


# -- the plugin --------------------------------------------------------------------------------

def _synth_sources() -> dict[str, Any]:
    from mtpeft_bench.tasks.nyud_layout import NYUD_SOURCES, TargetSource

    return {**NYUD_SOURCES, "sal": TargetSource("saliency", "mask_png"), "parts": TargetSource("parts", "label_png")}


@register_dataset("synth")
class SynthDataset(DatasetPlugin):
    """Procedural rooms with primitives: exact labels for six dense tasks, generated once and cached."""

    version = 1
    tasks = {
        "semseg": segmentation_task("semseg", len(CLASS_NAMES), 1.0, "surface class: " + ", ".join(CLASS_NAMES)),
        "depth": depth_task("z-depth in metres"),
        "normals": normals_task("camera-frame unit normals (x right, y up, z towards the viewer)"),
        "sal": saliency_task("primitives (1) vs room (0)"),
        "edge": edge_task("F_tol", 0.011, "class / part / object boundaries, 1 px on the nearer side"),
        "parts": segmentation_task("parts", len(PART_NAMES), 2.0, "object parts: " + ", ".join(PART_NAMES)),
    }
    default_tasks = ("semseg", "depth", "normals", "sal", "edge", "parts")
    image_size = (96, 128)
    splits = ("train", "val")
    requires_root = False
    default_preset = "cpu"
    reference = None
    Config = SynthConfig

    def __init__(self, config: SynthConfig | None = None):
        super().__init__(config)
        # the native size follows the configured resolution
        self.image_size = (self.config.height, self.config.width)

    def cache_dir(self) -> Path:
        return default_cache_root() / "synth" / self.config.key()

    def resolve_root(self, root: Path | None) -> Path:
        """The dataset folder (``root``, i.e. an explicit ``--data-root``, else the cache folder),
        generated first if needed."""
        return ensure_dataset(Path(root) if root is not None else self.cache_dir(), self.config)

    def build(self, split: str, tasks: Sequence[TaskSpec], image_size: tuple[int, int], root: Path | None,
              train: bool) -> Any:
        from mtpeft_bench.tasks.nyud_layout import LayoutDataset, NyudLayout

        if split not in self.splits:
            raise UserError(f"dataset 'synth' has no split {split!r}; use one of {', '.join(self.splits)}")
        folder = self.resolve_root(root)
        return LayoutDataset(NyudLayout(folder, _synth_sources(), depth_unit="m"), split, tasks, image_size, train)
