"""The ``synth`` renderer: every task's ground truth and the RGB image from one ray cast of a scene.

:func:`render_scene` is the public entry point; the ``synth`` dataset and the pretraining corpus
(:mod:`mtpeft_bench.pretraining.corpus`) both draw their images with it.
"""

from __future__ import annotations

import numpy as np

from mtpeft_bench.tasks.synth.geometry import box_face_normals, camera_rays, camera_rotation, cast_rays
from mtpeft_bench.tasks.synth.scene import CLASS_OF_KIND, ROOM_FACE_CLASS, Scene
from mtpeft_bench.tasks.synth.shading import shade
from mtpeft_bench.tasks.synth.surfaces import primitive_albedo, primitive_normals, primitive_parts, room_albedo


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
    t, owner, sub = cast_rays(scene, origin, d)
    if not np.isfinite(t).all():
        raise ValueError("some camera rays leave the room: is the camera inside it?")
    p = origin + t[:, None] * d

    normal = np.empty_like(p)
    semseg = np.empty(t.shape, np.uint8)
    parts = np.zeros(t.shape, np.uint8)
    albedo = np.empty_like(p)
    room = owner == 0
    normal[room] = -box_face_normals(sub[room])  # the room is seen from inside
    semseg[room] = ROOM_FACE_CLASS[sub[room]]
    albedo[room] = room_albedo(scene.room, p[room], sub[room])
    for i, prim in enumerate(scene.primitives, start=1):
        m = owner == i
        if m.any():
            normal[m] = primitive_normals(prim, p[m], sub[m])
            semseg[m] = CLASS_OF_KIND[prim.kind]
            parts[m] = primitive_parts(prim, sub[m])
            albedo[m] = primitive_albedo(prim, p[m], sub[m])

    image = shade(scene, p, normal, albedo)
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

