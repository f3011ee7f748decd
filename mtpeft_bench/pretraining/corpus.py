"""The pretraining corpus of mtbench's built-in backbones: procedural outdoor scenes, disjoint from ``synth``.

The images are drawn with the ``synth`` ray-caster (:func:`mtpeft_bench.tasks.synth.render.render_scene`
and the ``Scene``/``Room``/``Camera``/``Light``/``Primitive``/``Texture`` types of
:mod:`mtpeft_bench.tasks.synth.scene`) but by a different
scene generator with its own seed stream, so no corpus image is a ``synth`` image and the
distributions differ on purpose:

=====================  ===========================================  ============================================
                       ``synth`` (the benchmark)                    this corpus (pretraining only)
=====================  ===========================================  ============================================
seed stream            ``default_rng([seed, split 0/1, index])``    ``default_rng([0x4D54505245, seed, index])``
setting                a 4-7 m room: floor, 4 walls, ceiling        outdoors: an 80 m "field" whose walls and
                                                                    ceiling are a plain far-away sky
objects                1-5 single primitives                        1-6 compound objects of six families
                                                                    (single, snowman, tower, table, stack, hut)
colours                uniform RGB in [0.1, 0.95]                   one of four HSV palettes per image (vivid,
                                                                    pastel, earth, mono); 30 % plain surfaces
camera                 60° field of view, 1.0-1.7 m high            45-75° field of view, 1.2-2.6 m high
light                  a ceiling lamp 0.2 m wide, fall-off 4 m      a distant "sun" 1.5 m wide, no fall-off,
                                                                    10-35 m high, ambient 0.25-0.5
=====================  ===========================================  ============================================

Every image comes with its albedo (the surfaces' colours without shading and shadows: an intrinsic-
image target, not one of the benchmark's tasks) and image-level labels of its scene: which
primitive kinds and which object families it holds (multi-hot), how many
objects (0-6; the generator asks for 1-6 and drops one that finds no free spot), the palette, and where the sun stands (low / middle / high, in front of or behind
the camera). :mod:`mtpeft_bench.pretraining.losses` uses them beside masked-image reconstruction.

The corpus is rendered once at ``height`` x ``width`` (default 96 x 128, ``synth``'s size) and
cached as one ``.npz`` (uint8 images and albedos) under ``$MTBENCH_CACHE/pretrain_corpus/``; every image
depends only on (seed, index), so it regenerates bit-identically with any number of workers.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtpeft_bench.errors import UserError
from mtpeft_bench.atomic import atomic_file
from mtpeft_bench.tasks.synth.cache import default_cache_root
from mtpeft_bench.tasks.synth.geometry import camera_rays, cast_rays
from mtpeft_bench.tasks.synth.pool import default_workers, progress_bar, run_chunks
from mtpeft_bench.tasks.synth.render import render_scene
from mtpeft_bench.tasks.synth.scene import (
    FLOOR,
    PRIMITIVE_KINDS,
    ROOM_FACE_CLASS,
    Camera,
    Light,
    Primitive,
    Room,
    Scene,
    Texture,
)


CORPUS_VERSION = 2
#: First word of every corpus seed sequence ("MTPRE"); ``synth`` seeds with [seed, 0 or 1, index].
SEED_TAG = 0x4D54505245

FAMILIES = ("single", "snowman", "tower", "table", "stack", "hut")
PALETTES = ("vivid", "pastel", "earth", "mono")
MAX_OBJECTS = 6
SUN_BINS = 6  # 3 elevation bins x (in front of / behind the camera)
FIELD = 80.0  # width and depth of the "field" (m); its walls are the sky
SKY_HEIGHT = 40.0

#: The label heads of the pretraining objective: name -> (kind, number of outputs).
LABELS: dict[str, tuple[str, int]] = {
    "kinds": ("multi_hot", len(PRIMITIVE_KINDS)),
    "families": ("multi_hot", len(FAMILIES)),
    "count": ("class", MAX_OBJECTS + 1),
    "palette": ("class", len(PALETTES)),
    "sun": ("class", SUN_BINS),
}


# -- scene sampling ----------------------------------------------------------------------------

def _hsv(rng: np.random.Generator, palette: str) -> tuple[float, float, float]:
    if palette == "vivid":
        h, s, v = rng.uniform(0, 1), rng.uniform(0.7, 1.0), rng.uniform(0.6, 1.0)
    elif palette == "pastel":
        h, s, v = rng.uniform(0, 1), rng.uniform(0.15, 0.4), rng.uniform(0.8, 1.0)
    elif palette == "earth":
        h, s, v = rng.uniform(0.03, 0.35), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
    else:  # mono
        h, s, v = 0.0, 0.0, rng.uniform(0.15, 0.95)
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h, s, v))


def _material(rng: np.random.Generator, palette: str, scale: tuple[float, float]) -> Texture:
    a = _hsv(rng, palette)
    b = a if rng.uniform() < 0.3 else _hsv(rng, palette)  # 30 % plain surfaces
    return Texture(a, b, float(rng.uniform(*scale)), float(rng.uniform(0, 1)))


def _single(rng, palette, x, z) -> list[Primitive]:
    kind = PRIMITIVE_KINDS[int(rng.integers(len(PRIMITIVE_KINDS)))]
    if kind == "sphere":
        r = rng.uniform(0.3, 0.9)
        return [Primitive(kind, (x, r, z), (r,), texture=_material(rng, palette, (1, 6)))]
    if kind == "box":
        size = (rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.8))
        return [Primitive(kind, (x, size[1], z), size, yaw=float(rng.uniform(0, math.pi / 2)),
                          texture=_material(rng, palette, (0.1, 0.5)))]
    if kind == "cylinder":
        return [Primitive(kind, (x, 0.0, z), (rng.uniform(0.15, 0.6), rng.uniform(0.5, 2.0)),
                          texture=_material(rng, palette, (0.05, 0.4)))]
    return [Primitive(kind, (x, 0.0, z), (rng.uniform(0.2, 0.7), rng.uniform(0.6, 2.0)),
                      texture=_material(rng, palette, (0.1, 0.6)))]


def _snowman(rng, palette, x, z) -> list[Primitive]:
    prims, y, r = [], 0.0, rng.uniform(0.3, 0.6)
    for _ in range(int(rng.integers(2, 4))):
        prims.append(Primitive("sphere", (x, y + r, z), (r,), texture=_material(rng, palette, (1, 4))))
        y += 1.8 * r  # the next ball sinks a little into this one
        r *= rng.uniform(0.6, 0.8)
    return prims


def _tower(rng, palette, x, z) -> list[Primitive]:
    r, h = rng.uniform(0.2, 0.5), rng.uniform(0.6, 1.8)
    return [Primitive("cylinder", (x, 0.0, z), (r, h), texture=_material(rng, palette, (0.05, 0.3))),
            Primitive("cone", (x, h, z), (r * rng.uniform(1.1, 1.5), rng.uniform(0.4, 1.0)),
                      texture=_material(rng, palette, (0.1, 0.4)))]


def _table(rng, palette, x, z) -> list[Primitive]:
    h, top = rng.uniform(0.5, 1.1), (rng.uniform(0.35, 0.8), rng.uniform(0.04, 0.1), rng.uniform(0.35, 0.8))
    return [Primitive("cylinder", (x, 0.0, z), (rng.uniform(0.05, 0.12), h), texture=_material(rng, palette, (0.1, 0.3))),
            Primitive("box", (x, h + top[1], z), top, yaw=float(rng.uniform(0, math.pi / 2)),
                      texture=_material(rng, palette, (0.1, 0.4)))]


def _stack(rng, palette, x, z) -> list[Primitive]:
    prims, y, half = [], 0.0, rng.uniform(0.3, 0.6)
    for _ in range(int(rng.integers(2, 4))):
        size = (half, half * rng.uniform(0.5, 1.0), half)
        prims.append(Primitive("box", (x, y + size[1], z), size, yaw=float(rng.uniform(0, math.pi / 2)),
                               texture=_material(rng, palette, (0.1, 0.4))))
        y += 2 * size[1]
        half *= rng.uniform(0.55, 0.8)
    return prims


def _hut(rng, palette, x, z) -> list[Primitive]:
    half = (rng.uniform(0.3, 0.6), rng.uniform(0.25, 0.5), rng.uniform(0.3, 0.6))
    roof = max(half[0], half[2]) * rng.uniform(1.45, 1.7)  # covers the box's corners
    return [Primitive("box", (x, half[1], z), half, yaw=float(rng.uniform(0, math.pi / 2)),
                      texture=_material(rng, palette, (0.1, 0.4))),
            Primitive("cone", (x, 2 * half[1], z), (roof, rng.uniform(0.4, 0.9)),
                      texture=_material(rng, palette, (0.1, 0.4)))]


_BUILDERS = {"single": _single, "snowman": _snowman, "tower": _tower, "table": _table, "stack": _stack, "hut": _hut}


def _footprint(prims: list[Primitive]) -> float:
    """Radius of a vertical cylinder around the object's axis that contains all of its parts."""
    return max(math.hypot(p.size[0], p.size[2]) if p.kind == "box" else p.size[0] for p in prims)


def sample_corpus_scene(rng: np.random.Generator) -> tuple[Scene, dict[str, Any]]:
    """One outdoor scene and its image-level labels.

    Returns:
        ``(scene, labels)``; ``labels`` holds ``kinds`` and ``families`` (0/1 lists in the order of
        :data:`~mtpeft_bench.tasks.synth.scene.PRIMITIVE_KINDS` and :data:`FAMILIES`), ``count`` (number of
        objects), ``palette`` and ``sun`` (class ids, see :data:`LABELS`).
    """
    palette = int(rng.integers(len(PALETTES)))
    sky = tuple(float(c) for c in colorsys.hsv_to_rgb(rng.uniform(0.5, 0.68), rng.uniform(0.1, 0.6),
                                                     rng.uniform(0.75, 1.0)))
    ground = _material(rng, "earth", (0.5, 2.0))
    room = Room(FIELD, FIELD, SKY_HEIGHT, floor=ground, wall=Texture(sky, sky, 1.0),
                ceiling=Texture(sky, sky, 1.0))
    cam_pos = (float(rng.uniform(-3, 3)), float(rng.uniform(1.2, 2.6)), float(rng.uniform(-3, 3)))
    camera = Camera(cam_pos, yaw=float(rng.uniform(-math.pi, math.pi)), pitch=math.radians(rng.uniform(5, 35)),
                    hfov_deg=float(rng.uniform(45, 75)))
    elevation = int(rng.integers(3))
    behind = int(rng.integers(2))
    sun_yaw = camera.yaw + (math.pi if behind else 0.0) + rng.uniform(-1.0, 1.0)
    sun_dist = rng.uniform(15, 30)
    sun_height = (rng.uniform(10, 15), rng.uniform(18, 25), rng.uniform(28, 35))[elevation]
    # camera yaw 0 looks along -z, so "in front" is (-sin yaw, -cos yaw) in (x, z)
    light = Light((cam_pos[0] - sun_dist * math.sin(sun_yaw), sun_height, cam_pos[2] - sun_dist * math.cos(sun_yaw)),
                  intensity=float(rng.uniform(1.0, 1.6)), ambient=float(rng.uniform(0.25, 0.5)), radius=1.5,
                  falloff=1e6)

    forward = np.array([-math.sin(camera.yaw), -math.cos(camera.yaw)])
    right = np.array([math.cos(camera.yaw), -math.sin(camera.yaw)])
    half_tan = math.tan(math.radians(camera.hfov_deg) / 2)
    objects: list[tuple[str, list[Primitive], float, float, float]] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        family = FAMILIES[int(rng.integers(len(FAMILIES)))]
        for _attempt in range(30):
            s = rng.uniform(2.0, 9.0)
            x, z = np.array(cam_pos)[[0, 2]] + s * forward + rng.uniform(-0.8, 0.8) * s * half_tan * right
            prims = _BUILDERS[family](rng, PALETTES[palette], float(x), float(z))
            r = _footprint(prims)
            if math.hypot(x - cam_pos[0], z - cam_pos[2]) >= r + 0.8 and all(
                    math.hypot(x - ox, z - oz) >= r + orad + 0.2 for _, _, ox, oz, orad in objects):
                objects.append((family, prims, float(x), float(z), r))
                break
    prims = tuple(p for _, parts, *_ in objects for p in parts)
    labels = {
        "kinds": [int(any(p.kind == k for p in prims)) for k in PRIMITIVE_KINDS],
        "families": [int(any(f == name for f, *_ in objects)) for name in FAMILIES],
        "count": len(objects),
        "palette": palette,
        "sun": elevation * 2 + behind,
        # not a label head: how many primitives each object has, in the order of scene.primitives
        "parts_per_object": [len(parts) for _, parts, *_ in objects],
    }
    return Scene(room, camera, light, prims), labels


# -- the corpus --------------------------------------------------------------------------------

@dataclass(frozen=True)
class CorpusConfig:
    """Which corpus: ``num_images`` rendered at ``height`` x ``width`` from seed ``seed``."""

    num_images: int = 4000
    height: int = 96
    width: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        for key, lo in (("num_images", 1), ("height", 16), ("width", 16), ("seed", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise UserError(f"pretraining corpus {key} must be an integer >= {lo}, got {value!r}")

    def key(self) -> str:
        return f"c{CORPUS_VERSION}-{self.num_images}-{self.height}x{self.width}-seed{self.seed}"


def corpus_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of corpus image ``index``: a seed stream no ``synth`` image uses."""
    return np.random.default_rng([SEED_TAG, seed, index])


def render_corpus_image(config: CorpusConfig, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Image ``index`` of the corpus (uint8[H, W, 3]), its albedo (uint8[H, W, 3]) and its labels.

    The albedo (the surfaces' own colour, without shading or shadows) is the same scene rendered
    under a uniform unit ambient light and no direct light, so it comes from the same code path
    as the image.
    """
    scene, labels = sample_corpus_scene(corpus_rng(config.seed, index))
    image = render_scene(scene, config.height, config.width)["image"]
    flat = dataclasses.replace(scene, light=Light(scene.light.position, intensity=0.0, ambient=1.0))
    albedo = render_scene(flat, config.height, config.width)["image"]
    return np.round(image * 255).astype(np.uint8), np.round(albedo * 255).astype(np.uint8), labels


#: ``height`` maps store world height (m) x HEIGHT_SCALE, clipped to 254; 255 marks the sky.
HEIGHT_SCALE = 50.0
SKY = 255


def render_corpus_geometry(config: CorpusConfig, index: int) -> dict[str, np.ndarray]:
    """Geometry maps of corpus image ``index`` (one ray cast, no shading), uint8[H, W] each:

    - ``height``: height above the ground (world y) of the surface each pixel sees, in units of
      1 / :data:`HEIGHT_SCALE` m (0-5 m), :data:`SKY` on the sky;
    - ``object``: which object the pixel sees: 0 the sky, 1 the ground, 2 + k the k-th object (all
      primitives of a compound object share one id).
    """
    scene, labels = sample_corpus_scene(corpus_rng(config.seed, index))
    origin = np.asarray(scene.camera.position, dtype=float)
    d = camera_rays(scene.camera, config.height, config.width)
    t, owner, sub = cast_rays(scene, origin, d)
    y = origin[1] + t * d[:, 1]
    sky = (owner == 0) & (ROOM_FACE_CLASS[sub] != FLOOR)
    height = np.where(sky, SKY, np.clip(np.round(y * HEIGHT_SCALE), 0, SKY - 1))
    object_of = np.concatenate([[1], 2 + np.repeat(np.arange(len(labels["parts_per_object"])),
                                                    labels["parts_per_object"])])
    obj = np.where(sky, 0, object_of[owner])
    shape = (config.height, config.width)
    return {"height": height.reshape(shape).astype(np.uint8), "object": obj.reshape(shape).astype(np.uint8)}


def load_geometry(config: CorpusConfig, progress: bool = True) -> dict[str, np.ndarray]:
    """``height`` and ``object`` uint8[N, H, W] for the whole corpus (cached beside the corpus)."""
    path = corpus_path(config).with_name(f"{config.key()}-geometry.npz")
    if path.is_file():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    maps = [render_corpus_geometry(config, i) for i in range(config.num_images)]
    arrays = {k: np.stack([m[k] for m in maps]) for k in ("height", "object")}
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:  # a handle: given a name, savez appends .npz
        np.savez(handle, **arrays)
    return arrays


def _render_range(args: tuple[CorpusConfig, int, int]) -> tuple[int, np.ndarray, np.ndarray, list[dict[str, Any]]]:
    config, start, stop = args
    out = [render_corpus_image(config, i) for i in range(start, stop)]
    return start, np.stack([o[0] for o in out]), np.stack([o[1] for o in out]), [o[2] for o in out]


def generate_corpus(config: CorpusConfig, progress: bool = True, workers: int | None = None) -> dict[str, np.ndarray]:
    """Render every image of ``config``: ``images`` and ``albedo`` uint8[N, H, W, 3] and one int array per label
    (``kinds`` [N, 4], ``families`` [N, 6], ``count``/``palette``/``sun`` [N])."""
    n = config.num_images
    images = np.empty((n, config.height, config.width, 3), np.uint8)
    albedo = np.empty_like(images)
    labels: list[dict[str, Any]] = [{}] * n
    chunks = [(config, k, min(n, k + 32)) for k in range(0, n, 32)]
    workers = default_workers(n) if workers is None else max(1, int(workers))
    bar = progress_bar(n, f"pretraining corpus: rendering {n} images", enabled=progress)
    try:
        for start, imgs, albs, labs in run_chunks(_render_range, chunks, workers):
            images[start:start + len(imgs)], albedo[start:start + len(imgs)] = imgs, albs
            labels[start:start + len(imgs)] = labs
            bar.update(len(imgs))
    finally:
        bar.close()
    arrays = {"images": images, "albedo": albedo}
    for name in LABELS:
        arrays[name] = np.asarray([lab[name] for lab in labels], dtype=np.int64)
    return arrays


def corpus_path(config: CorpusConfig) -> Path:
    return default_cache_root() / "pretrain_corpus" / f"{config.key()}.npz"


def load_corpus(config: CorpusConfig, progress: bool = True) -> dict[str, np.ndarray]:
    """The corpus of ``config``, from the cache or rendered (and cached, atomically) first."""
    path = corpus_path(config)
    if path.is_file():
        with np.load(path) as data:
            if json.loads(str(data["manifest"])) == manifest_for(config):
                return {k: data[k] for k in data.files if k != "manifest"}
    arrays = generate_corpus(config, progress)
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:  # a handle: given a name, savez appends .npz
        np.savez(handle, manifest=np.asarray(json.dumps(manifest_for(config))), **arrays)
    return arrays


def manifest_for(config: CorpusConfig) -> dict[str, Any]:
    return {"corpus_version": CORPUS_VERSION, "config": asdict(config), "labels": {k: list(v) for k, v in LABELS.items()}}


if __name__ == "__main__":  # pragma: no cover - a quick look: python -m mtpeft_bench.pretraining.corpus N
    cfg = CorpusConfig(num_images=int(sys.argv[1]) if len(sys.argv) > 1 else 8)
    print({k: v.shape for k, v in generate_corpus(cfg, workers=1).items()})
