"""Shading of ``synth``: one soft point light with shadow rays, ambient light, gamma encoding."""

from __future__ import annotations

import numpy as np

from mtpeft_bench.tasks.synth.geometry import INTERSECT, may_hit, row_dot
from mtpeft_bench.tasks.synth.scene import Light, Scene
from mtpeft_bench.tasks.synth.surfaces import grain


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
    candidates = [np.flatnonzero(may_hit(prim, origin, np.asarray(light.position) - origin, 1.0, light.radius))
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


def shade(scene: Scene, p: np.ndarray, n: np.ndarray, albedo: np.ndarray) -> np.ndarray:
    """Lambertian + ambient colour float[N, 3] in [0, 1], gamma-encoded for display."""
    light = scene.light
    to_light = np.asarray(light.position) - p
    dist = np.sqrt(row_dot(to_light, to_light))
    lambert = np.clip(row_dot(n, to_light) / dist, 0.0, None)
    direct = light.intensity * lambert / (1.0 + (dist / light.falloff) ** 2)
    lit = np.flatnonzero(direct > 0)  # surfaces facing away from the light need no shadow rays
    direct[lit] *= _visibility(scene, p[lit], n[lit])
    # texture colours are display (gamma-encoded) values: light them in linear space, then re-encode
    linear = (albedo * grain(p)[:, None]) ** 2.2 * (light.ambient + direct)[:, None]
    return np.clip(linear, 0.0, 1.0) ** (1 / 2.2)

