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
- ``semseg``: class of the surface: :data:`~mtpeft_bench.tasks.synth.scene.CLASS_NAMES` (every pixel labelled).
- ``parts``: object part: :data:`~mtpeft_bench.tasks.synth.scene.PART_NAMES`; 0 = not an object (room). A box's bottom and a
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
name carries ``GENERATOR_VERSION`` (:mod:`~mtpeft_bench.tasks.synth.config`), bumped whenever the
generator's output changes.

Modules (each depends only on those above it)
---------------------------------------------
- :mod:`~mtpeft_bench.tasks.synth.scene`: the scene description (camera, room, light,
  primitives, textures) and the class / part tables;
- :mod:`~mtpeft_bench.tasks.synth.geometry`: camera rays and ray casting (intersections,
  :func:`~mtpeft_bench.tasks.synth.geometry.cast_rays`);
- :mod:`~mtpeft_bench.tasks.synth.surfaces`: normals, part labels and textures at hit points;
- :mod:`~mtpeft_bench.tasks.synth.shading`: light, soft shadows, gamma;
- :mod:`~mtpeft_bench.tasks.synth.render`: :func:`~mtpeft_bench.tasks.synth.render.render_scene`,
  the public renderer (the pretraining corpus draws its images with it too);
- :mod:`~mtpeft_bench.tasks.synth.sampling`: random indoor scenes and the per-image seed stream;
- :mod:`~mtpeft_bench.tasks.synth.config`: ``SynthConfig`` and the generator version;
- :mod:`~mtpeft_bench.tasks.synth.pool`: the worker pool and progress bar of batch rendering;
- :mod:`~mtpeft_bench.tasks.synth.cache`: the dataset on disk (generation, manifest, cache folder);
- :mod:`~mtpeft_bench.tasks.synth.dataset`: the registered ``synth`` dataset plugin.
"""
