"""Ray geometry of ``synth``: camera rays, ray-primitive and ray-room intersections, nearest hits.

Intersections take ray origins ``o`` float[3] (one shared origin) or float[N, 3] and directions
``d`` float[N, 3], and return the ray parameter ``t`` float[N] (inf = miss) and a sub-surface code
``sub`` int[N] (which face, cap or side was hit).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mtpeft_bench.tasks.synth.scene import Camera, Primitive, Room, Scene


EPS = 1e-5  # smallest accepted ray parameter; camera rays have |d| >= 1, shadow rays |d| ~ metres


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

def row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of float[..., 3] arrays (broadcasting); faster than einsum for 3 columns."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def rotation_y(yaw: float) -> np.ndarray:
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
    t = _nearest_root(row_dot(d, d), row_dot(oc, d), row_dot(oc, oc) - r * r)
    return t, np.zeros(t.shape, np.int64)


def _slab(lo: np.ndarray, hi: np.ndarray, q: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-axis entry/exit parameters of the ray q + t d through the slabs lo <= x <= hi."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t_lo, t_hi = (lo - q) * inv, (hi - q) * inv
    return np.minimum(t_lo, t_hi), np.maximum(t_lo, t_hi)


def intersect_box(prim: Primitive, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rot = rotation_y(prim.yaw)
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


def box_face_normals(sub: np.ndarray) -> np.ndarray:
    """Outward normals float[M, 3] of box faces coded axis * 2 + side."""
    n = np.zeros((sub.size, 3))
    n[np.arange(sub.size), sub // 2] = np.where(sub % 2 == 1, 1.0, -1.0)
    return n


# -- nearest hits: a cheap bounding-sphere test first, the exact intersection on the few rays left

def bounding_sphere(prim: Primitive) -> tuple[np.ndarray, float]:
    """Centre float[3] and radius of a sphere that contains ``prim``."""
    c = np.asarray(prim.center, dtype=float)
    if prim.kind == "sphere":
        return c, prim.size[0]
    if prim.kind == "box":
        return c, float(np.linalg.norm(prim.size))
    r, height = prim.size
    return c + np.array([0.0, height / 2, 0.0]), math.hypot(r, height / 2)


def may_hit(prim: Primitive, o: np.ndarray, d: np.ndarray, t_max: float = np.inf, pad: float = 0.0) -> np.ndarray:
    """bool[N]: rays that meet the bounding sphere of ``prim``, radius grown by ``pad``, for some 0 < t < t_max.

    A cheap test that lets the exact (costlier) intersection run only on the few rays that can
    hit the primitive.
    """
    c, r = bounding_sphere(prim)
    r += pad
    oc = o - c
    a = row_dot(d, d)
    half_b = row_dot(oc, d)
    cc = row_dot(oc, oc) - r * r
    disc = half_b * half_b - a * cc
    sq = np.sqrt(np.maximum(disc, 0.0))
    return (disc >= 0) & (-half_b + sq > 0) & (-half_b - sq < t_max * a)


def _subset(o: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The origins of the masked rays (``o`` is one shared origin float[3] or one per ray float[N, 3])."""
    return o if o.ndim == 1 else o[mask]


def cast_rays(scene: Scene, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of every ray: t float[N], owner int[N] (0 = room, i = primitive i-1), sub int[N]."""
    t, sub = intersect_room(scene.room, o, d)
    owner = np.zeros(t.shape, np.int64)
    for i, prim in enumerate(scene.primitives, start=1):
        idx = np.flatnonzero(may_hit(prim, o, d))
        if idx.size == 0:
            continue
        t_i, sub_i = INTERSECT[prim.kind](prim, _subset(o, idx), d[idx])
        closer = t_i < t[idx]
        idx, t_i, sub_i = idx[closer], t_i[closer], sub_i[closer]
        t[idx], sub[idx], owner[idx] = t_i, sub_i, i
    return t, owner, sub

