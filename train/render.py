"""Rendering: the RGB "photo" (Blender Cycles on CPU, or Workbench), the background composite, and the person
mask and part-label image from an exact numpy z-buffer (core.geometry.rasterise).

Why rasterise the mask ourselves: the occupancy volume is voxelised from the same projected vertices,
sampled at pixel centres; a mask made the same way (a pixel is "person" when its centre lies inside the
projected mesh) agrees with the volume's front projection by construction, at any resolution, with no
threshold on an anti-aliased alpha.  Cycles' alpha is still rendered (it composites the person over the
background) and its agreement with the rasterised mask is recorded per sample (meta "alpha_iou").

Camera intrinsics in pixels: ``focal_px`` and ``principal_xy`` (train.scene module doc).

``render_person_photo(path, size=256, seed=0)`` renders a clothed standing Anny adult, full body, in a
room-like background: a photo-like PNG for tests of core's detection and of the CLI.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from core import geometry
from train.scene import REGIONS, SceneConfig, build_scene, project


# ------------------------------------------------------------------------------------- rasteriser

def rasterise(uv: np.ndarray, depth: np.ndarray, faces: np.ndarray, out_hw, face_labels=None):
    """The z-buffer of core.geometry.rasterise as images: (mask bool (H, W), labels uint8 (H, W) from
    face_labels (F,) (0 where empty or when None), zbuf float (H, W), inf where empty)."""
    face_id, zbuf = geometry.rasterise(uv, depth, faces, out_hw)
    mask = face_id >= 0
    labels = np.zeros(face_id.shape, np.uint8)
    if face_labels is not None:
        labels[mask] = np.asarray(face_labels)[face_id[mask]]
    return mask, labels, zbuf


def face_part_labels(parts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """A face's part: the label two or three of its vertices share, else its first vertex's."""
    p = parts[faces]
    lab = p[:, 0].copy()
    same12 = p[:, 1] == p[:, 2]
    lab[same12] = p[same12, 1]
    return lab.astype(np.uint8)


# ------------------------------------------------------------------------------------- background

def _smooth_noise(rng, hw, scale):
    h, w = hw
    gh, gw = max(2, int(h / scale) + 2), max(2, int(w / scale) + 2)
    g = rng.random((gh, gw, 3)).astype(np.float32)
    import cv2
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)


def background_image(spec: dict, hw, background_dir: str | None = None) -> np.ndarray:
    """float32 (H, W, 3) in [0, 1] for a background spec from train.scene.sample_background."""
    h, w = int(hw[0]), int(hw[1])
    rng = np.random.default_rng(spec["seed"])
    c1, c2 = np.array(spec["colour"], np.float32), np.array(spec["colour2"], np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = spec["kind"]
    if kind == "images" and background_dir:
        files = sorted(p for p in Path(background_dir).iterdir()
                       if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        if files:
            from core.image_io import load_image
            import cv2
            img = load_image(files[int(spec["pick"] * len(files)) % len(files)])
            s = max(h / img.shape[0], w / img.shape[1])
            img = cv2.resize(img, (max(w, int(math.ceil(img.shape[1] * s))),
                                   max(h, int(math.ceil(img.shape[0] * s)))), interpolation=cv2.INTER_AREA)
            oy, ox = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
            return img[oy:oy + h, ox:ox + w].astype(np.float32) / 255.0
        kind = "gradient"
    if kind == "colour":
        img = np.broadcast_to(c1, (h, w, 3)).copy()
        img += (_smooth_noise(rng, (h, w), max(h, w) / 3) - 0.5) * 0.06
    elif kind == "gradient":
        a = math.radians(spec["angle_deg"])
        t = ((xx / w - 0.5) * math.cos(a) + (yy / h - 0.5) * math.sin(a)) + 0.5
        t = np.clip(t, 0, 1)[..., None]
        img = c1 * (1 - t) + c2 * t
    elif kind == "noise":
        n = _smooth_noise(rng, (h, w), max(2.0, min(h, w) / spec["scale"]))
        img = c1 * (1 - n) + c2 * n
    else:  # room: wall, skirting board, floor with perspective darkening, soft vignette
        hz = int(spec["horizon"] * h)
        img = np.broadcast_to(c1, (h, w, 3)).copy()
        img *= (0.85 + 0.15 * (1 - yy / max(hz, 1)))[..., None].clip(0.8, 1.0)
        floor = c2 * 0.7
        t = ((yy - hz) / max(h - hz, 1)).clip(0, 1)[..., None]
        img = np.where((yy >= hz)[..., None], floor * (0.8 + 0.4 * t), img)
        img[max(0, hz - max(1, h // 60)):hz] *= 0.6
        img += (_smooth_noise(rng, (h, w), max(2.0, min(h, w) / 40)) - 0.5) * 0.05
        r = np.sqrt(((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2))[..., None]
        img *= (1 - 0.35 * r ** 2)
    return np.clip(img, 0, 1).astype(np.float32)


# ------------------------------------------------------------------------------------- render

def render_rgba(scene, threads: int = 0) -> np.ndarray:
    """Render the current bpy scene -> float32 (H, W, 4), straight alpha, sRGB display values."""
    import bpy
    from PIL import Image

    if threads:
        scene.render.threads_mode = "FIXED"
        scene.render.threads = int(threads)
    fd, tmp = tempfile.mkstemp(prefix="mh_render_", suffix=".png")
    os.close(fd)
    try:
        scene.render.filepath = tmp
        bpy.ops.render.render(write_still=True)
        img = np.asarray(Image.open(tmp).convert("RGBA"), dtype=np.float32) / 255.0
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return img


def composite(rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4]
    out = rgba[..., :3] * a + background * (1 - a)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def person_mesh(uv, points_cam, body, garments=(), garment_points=()):
    """The rendered person as one triangle soup for the z-buffer: the body, then each garment.
    uv, points_cam: the body's projected vertices; garment_points: [(uv, points_cam)] per garment.
    Returns (uv, depth, faces, face part labels); a garment face takes the body part nearest to it."""
    uvs, depths, faces = [uv], [points_cam[:, 2]], [body.faces]
    labels = [face_part_labels(body.parts, body.faces)]
    n = len(uv)
    for g, (guv, gpc) in zip(garments, garment_points):
        uvs.append(guv)
        depths.append(gpc[:, 2])
        faces.append(g.faces + n)
        labels.append(face_part_labels(g.parts, g.faces))
        n += len(guv)
    return np.concatenate(uvs), np.concatenate(depths), np.concatenate(faces), np.concatenate(labels)


def render_photo(body, scene_params: dict, dressed: np.ndarray, regions: np.ndarray,
                 cfg: SceneConfig, timings: dict | None = None, garments=()) -> dict:
    """Render the photo of one sample: rgb (canvas), alpha, rasterised mask/parts/depth, uv, cam points
    (the body's; "garments": [(uv, cam points)] of each garment)."""
    t0 = time.perf_counter()
    cam = scene_params["camera"]
    hw = cam["canvas_hw"]
    scene = build_scene(scene_params, dressed, body.faces, regions, hw, garments)
    t1 = time.perf_counter()
    rgba = render_rgba(scene, threads=cfg.threads)
    bg = background_image(scene_params["background"], hw, cfg.background_dir)
    rgb = composite(rgba, bg)
    uv, pc = project(dressed, cam)
    worn = [project(g.vertices, cam) for g in garments]
    all_uv, depth, faces, labels = person_mesh(uv, pc, body, garments, worn)
    mask, parts, zbuf = rasterise(all_uv, depth, faces, hw, labels)
    if timings is not None:
        timings["scene"] = timings.get("scene", 0.0) + (t1 - t0)
        timings["render"] = timings.get("render", 0.0) + (time.perf_counter() - t1)
    return dict(rgb=rgb, alpha=rgba[..., 3], mask=mask, parts=parts, uv=uv, points_cam=pc, garments=worn)


# ------------------------------------------------------------------------------------- test photo

def render_person_photo(path, size: int = 256, seed: int = 0, samples: int = 32, pose_spec: dict | None = None,
                        yaw_deg: tuple = (-25, 25)) -> dict:
    """Render a clothed, standing adult Anny person, full body, in a room-like background, to a PNG.

    pose_spec: a `train.poses` spec (default: a lightly perturbed standing pose); yaw_deg: the camera's range
    around the person (0 = in front, 180 = behind; the lights stay on the camera's side).
    Returns dict(mask=bool (size, size), landmarks16=(16, 3) float32 in image pixels (MPII order,
    visibility 1), rgb=uint8 image, body=the posed train.bodies.Body, undressed).  Deterministic in `seed`.
    """
    from core.image_io import save_png
    from core.landmarks import mpii16_from_coco17
    from train import bodies

    rng = np.random.default_rng([int(seed), 7919])
    for _ in range(50):  # an adult (morphological age 20-70) of ordinary build
        shape = bodies.sample_phenotype(rng)
        if 20 <= shape["morphological_age_years"] <= 70:
            break
    from train import poses
    rest = bodies.rest_skeleton(shape["phenotype"])
    pose = poses.sample_pose(rng, rest, kind="standing", perturb=0.5)
    deltas = pose["deltas"] if pose_spec is None else poses.spec_to_deltas(pose_spec, rest)
    verts, heads = bodies._forward(shape["phenotype"], deltas)
    st = bodies.topology()
    verts = verts - np.array([heads[0, 0], heads[0, 1], verts[:, 2].min()])
    coco = st.kp_weights @ verts
    body = bodies.Body(vertices=verts, faces=st.faces, parts=st.parts, joints=heads,
                       joint_names=st.bone_labels, coco17=coco,
                       landmarks16=bodies.landmarks16_3d(coco), rest_vertices=rest["__vertices__"],
                       params=dict(shape))
    from train.scene import clothing_regions, dress, sample_appearance, sample_lights, sample_camera
    cfg = SceneConfig(yaw_deg=tuple(yaw_deg), elevation_deg=(0, 12), focal_mm=(40, 60), roll_deg=(0, 0),
                      fill=(0.8, 0.85), offset=(-0.2, 0.2), canvas_margin=1.0, n_lights=(2, 2),
                      light_kinds=("area",), area_power=(120, 200), light_elevation_deg=(25, 50),
                      temperature_k=(4500, 6500), world=("colour",), world_strength=(0.35, 0.45),
                      p_hair=1.0, p_shoes=1.0, samples=samples, denoise=True)
    app = sample_appearance(rng, cfg)
    app["thickness"] = 0.006
    regions = clothing_regions(body, app)
    dressed = dress(body, regions, app["thickness"])
    cam = sample_camera(rng, dressed, cfg, (size, size))
    lights = sample_lights(rng, dressed, cfg)
    lights["world"]["colour"] = [0.9, 0.9, 0.9]
    # lights on the camera's side of the person
    side = -1.0 if np.cos(np.radians(np.mean(yaw_deg))) >= 0 else 1.0
    for lp in lights["lights"]:
        p = np.asarray(lp["position"])
        p[1] = side * (abs(p[1]) + 1.0)
        lp["position"] = p.tolist()
    bg = dict(kind="room", colour=[0.78, 0.74, 0.68], colour2=[0.55, 0.42, 0.3], angle_deg=0.0,
              scale=10.0, horizon=0.72, pick=0.0, seed=int(seed))
    params = dict(appearance=app, camera=cam, lighting=lights, background=bg,
                  render_seed=int(seed), engine="cycles", samples=samples, denoise=True)
    out = render_photo(body, params, dressed, regions, cfg)
    uv, _ = project(coco, cam)
    lm16 = mpii16_from_coco17(np.concatenate([uv, np.ones((17, 1))], axis=1)).astype(np.float32)
    save_png(path, out["rgb"])
    return dict(mask=out["mask"], landmarks16=lm16, rgb=out["rgb"], params=params, body=body)
