"""Scene randomisation (pure numpy: :func:`sample_scene`) and the Blender scene built from it
(:func:`build_scene`, needs ``bpy``).

Every range lives in :class:`SceneConfig` with its default documented there.  ``sample_scene`` turns an
rng + a body into a JSON-able dict (it goes into the sample's meta), and ``build_scene`` makes exactly
that scene in Blender, so a sample can be re-rendered from its meta.

Camera model (shared with train.render's rasteriser and train.voxelise.project_to_volume): a pinhole with
square pixels, focal ``focal_px`` (source pixels), principal point at the canvas centre
``(W/2, H/2)`` (pixel centres at i + .5, Blender's convention with zero lens shift), camera frame
x right, y down, z forward (OpenCV).  ``R_world_to_cam`` (3x3) and ``cam_pos`` (3,) give
``p_cam = R (p_world - cam_pos)``.

Canvas: the rendered "photo" is ``canvas_margin`` x the frame (default 1.5): the
body fills ``fill`` (60-95 %) of the central frame's height; the margin keeps the jittered crop box
(person at 85 % of the crop, scale/shift jitter) inside the photo, so crops have no black borders.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from core.blender_mesh import mesh_from_arrays
from core.geometry import vertex_normals
from train.bodies import PART, PART_UNKNOWN, Body

# Skin tones (linear-ish sRGB 0..1), from very light to very dark (Fitzpatrick I-VI, two per type).
SKIN_TONES = [
    (0.96, 0.80, 0.69), (0.92, 0.74, 0.62), (0.88, 0.69, 0.55), (0.80, 0.60, 0.46),
    (0.76, 0.56, 0.40), (0.67, 0.48, 0.34), (0.58, 0.40, 0.27), (0.48, 0.32, 0.22),
    (0.38, 0.25, 0.17), (0.30, 0.20, 0.14), (0.23, 0.15, 0.11), (0.17, 0.11, 0.08),
]
HAIR_COLOURS = [(0.05, 0.04, 0.03), (0.15, 0.09, 0.05), (0.35, 0.22, 0.12), (0.6, 0.45, 0.25),
                (0.8, 0.7, 0.5), (0.55, 0.2, 0.08), (0.6, 0.6, 0.6), (0.9, 0.9, 0.88)]

REGIONS = ("skin", "top", "bottom", "shoes", "hair", "eyes", "brows", "lips")
# Painted face features, sized for an adult head (eye centres 62 mm apart) and scaled with it: half-widths
# and half-heights in metres, centres relative to anny's COCO eye / nose keypoints (rest pose, -y is the front).
FACE_FEATURES = dict(
    eyes=dict(centre="eye", dz=0.0, half_x=0.014, half_z=0.006),
    brows=dict(centre="eye", dz=0.015, half_x=0.017, half_z=0.004),
    lips=dict(centre="nose", dz=-0.029, half_x=0.022, half_z=0.006),
)


@dataclass
class SceneConfig:
    """All randomisation ranges. (lo, hi) tuples are uniform ranges unless noted."""

    # --- camera
    yaw_deg: tuple = (0.0, 360.0)            # around the body; 0 = in front of the person
    elevation_deg: tuple = (-10.0, 25.0)     # camera above (+) / below (-) the body centre
    focal_mm: tuple = (28.0, 85.0)           # 36 mm sensor width (full frame)
    sensor_mm: float = 36.0
    roll_deg: tuple = (-5.0, 5.0)
    fill: tuple = (0.60, 0.95)               # body height (or width) / frame height (or width)
    offset: tuple = (-0.8, 0.8)              # horizontal offset, fraction of the free margin of the frame
    canvas_margin: float = 1.5               # photo = this x frame (see module doc)
    # --- lights
    n_lights: tuple = (1, 3)                 # integers, inclusive
    light_kinds: tuple = ("sun", "area", "point")
    sun_strength: tuple = (0.5, 3.0)         # W/m^2 (Blender sun "strength")
    area_power: tuple = (40.0, 400.0)        # W
    area_size: tuple = (0.5, 3.0)            # m
    point_power: tuple = (40.0, 500.0)       # W
    light_distance: tuple = (2.0, 5.0)       # m from the body centre
    light_elevation_deg: tuple = (10.0, 75.0)
    temperature_k: tuple = (2700.0, 7500.0)  # colour temperature of each light
    world: tuple = ("colour", "sky")         # world (ambient) kinds, chosen uniformly
    world_strength: tuple = (0.1, 0.6)
    # --- appearance
    p_hair: float = 0.85
    p_shoes: float = 0.85
    p_long_sleeves: float = 0.45
    p_sleeveless: float = 0.15
    bottoms: tuple = ("trousers", "shorts", "skirt")  # skirt = knee-length colour region (no extra geometry)
    textures: tuple = ("plain", "noise", "stripes", "checker")
    p_thickness: float = 0.5                 # chance that clothes get a thickness
    thickness_m: tuple = (0.003, 0.012)      # normal offset of clothed vertices
    skin_jitter: float = 0.04                # +- per channel on the palette tone
    # --- background (composited behind the person, see train.render)
    backgrounds: tuple = ("colour", "gradient", "noise", "room")
    background_dir: str | None = None        # a folder of images; when set, "images" joins the choices
    # --- render
    engine: str = "cycles"                   # cycles | workbench
    samples: int = 16                        # Cycles samples per pixel
    denoise: bool = False                    # Cycles OIDN denoiser
    threads: int = 0                         # Cycles CPU threads, 0 = all

    def to_dict(self) -> dict:
        return asdict(self)


def kelvin_to_rgb(k: float) -> tuple:
    """Colour of a black body at k kelvin (Tanner Helland's fit), 0..1, normalised to max 1."""
    t = k / 100.0
    r = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
    g = 99.4708025861 * math.log(t) - 161.1195681661 if t <= 66 else 288.1221695283 * (t - 60) ** -0.0755148492
    b = 255.0 if t >= 66 else (0.0 if t <= 19 else 138.5177312231 * math.log(t - 10) - 305.0447927307)
    c = np.clip(np.array([r, g, b]) / 255.0, 0, 1)
    return tuple(float(x) for x in c / c.max())


def _u(rng, r):
    return float(rng.uniform(r[0], r[1]))


def _colour(rng, dark=0.05, light=0.9):
    h, s, v = rng.random(), rng.uniform(0.1, 0.9), rng.uniform(dark, light)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [float(x) for x in [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]]


def _look_at(cam_pos, target, roll_deg):
    fwd = target - cam_pos
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right = right / np.linalg.norm(right)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])  # rows: camera axes in world
    a = math.radians(roll_deg)
    Rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    return Rz @ R


def project(points_world, cam: dict):
    """World points -> (uv source px (N, 2), camera-frame points (N, 3))."""
    R = np.asarray(cam["R_world_to_cam"])
    pc = (np.asarray(points_world, dtype=np.float64) - np.asarray(cam["cam_pos"])) @ R.T
    f = cam["focal_px"]
    cx, cy = cam["principal_xy"]
    uv = np.stack([f * pc[:, 0] / pc[:, 2] + cx, f * pc[:, 1] / pc[:, 2] + cy], axis=1)
    return uv, pc


def sample_camera(rng, body_vertices, cfg: SceneConfig, frame_hw) -> dict:
    """Camera whose frame (frame_hw) the body fills by a random `fill`; the canvas is canvas_margin larger."""
    fh, fw = frame_hw
    ch, cw = int(round(fh * cfg.canvas_margin)), int(round(fw * cfg.canvas_margin))
    yaw, elev = _u(rng, cfg.yaw_deg), _u(rng, cfg.elevation_deg)
    focal_mm, roll = _u(rng, cfg.focal_mm), _u(rng, cfg.roll_deg)
    fill, offset = _u(rng, cfg.fill), _u(rng, cfg.offset)
    focal_px = focal_mm / cfg.sensor_mm * cw  # sensor fit: horizontal, over the canvas
    lo, hi = body_vertices.min(0), body_vertices.max(0)
    target = (lo + hi) / 2
    size = float(np.linalg.norm(hi - lo))
    y, e = math.radians(yaw), math.radians(elev)
    direction = np.array([math.sin(y) * math.cos(e), -math.cos(y) * math.cos(e), math.sin(e)])
    dist = focal_px * (hi[2] - lo[2]) / (fill * fh) + 0.5 * size
    cam = None
    for _ in range(4):  # fix the distance so the projected extent is exactly `fill` of the frame
        pos = target + dist * direction
        R = _look_at(pos, target, roll)
        cam = dict(R_world_to_cam=R, cam_pos=pos, focal_px=focal_px, principal_xy=(cw / 2, ch / 2))
        uv, pc = project(body_vertices, cam)
        ext = uv.max(0) - uv.min(0)
        ratio = max(ext[1] / fh, ext[0] / fw) / fill
        mean_z = float(pc[:, 2].mean())
        dist = (dist - mean_z) + mean_z * ratio
    # horizontal offset within the frame's free margin: move the camera along its x axis
    uv, pc = project(body_vertices, cam)
    ext = uv.max(0) - uv.min(0)
    cur = (uv.max(0) + uv.min(0)) / 2 - np.array([cw / 2, ch / 2])
    want_dx = offset * max(0.0, (fw - ext[0]) / 2) - cur[0]
    want_dy = -cur[1]
    mean_z = float(pc[:, 2].mean())
    R = np.asarray(cam["R_world_to_cam"])
    pos = np.asarray(cam["cam_pos"]) - R[0] * want_dx * mean_z / focal_px - R[1] * want_dy * mean_z / focal_px
    cam = dict(R_world_to_cam=R.tolist(), cam_pos=pos.tolist(), focal_px=float(focal_px),
               principal_xy=[cw / 2, ch / 2], canvas_hw=[ch, cw], frame_hw=[int(fh), int(fw)],
               yaw_deg=yaw, elevation_deg=elev, focal_mm=focal_mm, sensor_mm=cfg.sensor_mm,
               roll_deg=roll, fill=fill, offset=offset)
    return cam


def sample_lights(rng, body_vertices, cfg: SceneConfig) -> dict:
    lo, hi = body_vertices.min(0), body_vertices.max(0)
    centre = (lo + hi) / 2
    lights = []
    for _ in range(int(rng.integers(cfg.n_lights[0], cfg.n_lights[1] + 1))):
        kind = cfg.light_kinds[int(rng.integers(len(cfg.light_kinds)))]
        az, el = rng.uniform(0, 2 * math.pi), math.radians(_u(rng, cfg.light_elevation_deg))
        d = _u(rng, cfg.light_distance)
        pos = centre + d * np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
        k = _u(rng, cfg.temperature_k)
        light = dict(kind=kind, position=pos.tolist(), target=centre.tolist(), temperature_k=k,
                     colour=list(kelvin_to_rgb(k)))
        if kind == "sun":
            light["strength"] = _u(rng, cfg.sun_strength)
        elif kind == "area":
            light["power"] = _u(rng, cfg.area_power)
            light["size"] = _u(rng, cfg.area_size)
        else:
            light["power"] = _u(rng, cfg.point_power)
        lights.append(light)
    world = cfg.world[int(rng.integers(len(cfg.world)))]
    return dict(lights=lights, world=dict(kind=world, colour=_colour(rng, 0.3, 1.0),
                                          strength=_u(rng, cfg.world_strength),
                                          sun_elevation_deg=float(rng.uniform(5, 60)),
                                          sun_rotation_deg=float(rng.uniform(0, 360))))


def sample_appearance(rng, cfg: SceneConfig) -> dict:
    tone = np.array(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))])
    tone = np.clip(tone + rng.uniform(-cfg.skin_jitter, cfg.skin_jitter, 3), 0.02, 1.0)

    def cloth():
        return dict(colour=_colour(rng), colour2=_colour(rng),
                    texture=cfg.textures[int(rng.integers(len(cfg.textures)))],
                    scale=float(rng.uniform(3, 25)), roughness=float(rng.uniform(0.4, 0.95)))

    sleeves = "long" if rng.random() < cfg.p_long_sleeves else (
        "none" if rng.random() < cfg.p_sleeveless else "short")
    return dict(
        skin=dict(colour=tone.tolist(), roughness=float(rng.uniform(0.35, 0.6))),
        top=cloth(), sleeves=sleeves,
        bottom=cloth(), bottom_kind=cfg.bottoms[int(rng.integers(len(cfg.bottoms)))],
        shoes=dict(cloth(), colour=_colour(rng, 0.02, 0.5)) if rng.random() < cfg.p_shoes else None,
        hair=dict(colour=list(HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))]),
                  long=bool(rng.random() < 0.4), roughness=0.5) if rng.random() < cfg.p_hair else None,
        thickness=float(_u(rng, cfg.thickness_m)) if rng.random() < cfg.p_thickness else 0.0,
    )


def sample_background(rng, cfg: SceneConfig) -> dict:
    kinds = list(cfg.backgrounds) + (["images"] if cfg.background_dir else [])
    kind = kinds[int(rng.integers(len(kinds)))]
    return dict(kind=kind, colour=_colour(rng, 0.1, 0.95), colour2=_colour(rng, 0.1, 0.95),
                angle_deg=float(rng.uniform(0, 360)), scale=float(rng.uniform(2, 30)),
                horizon=float(rng.uniform(0.55, 0.85)), pick=float(rng.random()),
                seed=int(rng.integers(2 ** 31)))


def sample_scene(rng, body: Body, cfg: SceneConfig, frame_hw) -> dict:
    """All scene parameters (JSON-able) for one sample. The camera is sampled on the dressed body."""
    appearance = sample_appearance(rng, cfg)
    regions = clothing_regions(body, appearance)
    dressed = dress(body, regions, appearance["thickness"])
    camera = sample_camera(rng, dressed, cfg, frame_hw)
    return dict(appearance=appearance, camera=camera, lighting=sample_lights(rng, dressed, cfg),
                background=sample_background(rng, cfg), render_seed=int(rng.integers(2 ** 31)),
                engine=cfg.engine, samples=int(cfg.samples), denoise=bool(cfg.denoise))


# ------------------------------------------------------------------------------------ body regions

def clothing_regions(body: Body, appearance: dict) -> np.ndarray:
    """Per-vertex region index into REGIONS (skin, top, bottom, shoes, hair, and the face's eyes, brows and
    lips on skin), decided on the rest pose."""
    n = len(body.vertices)
    reg = np.zeros(n, dtype=np.int64)
    parts = body.parts
    if body.source != "anny" or np.all(parts == PART_UNKNOWN):
        return reg  # scans keep their own look: one material (textures are not imported)
    rv = body.rest_vertices
    from train.bodies import topology
    coco = topology().kp_weights @ rv
    sh_z = (coco[5, 2] + coco[6, 2]) / 2
    hip_z = (coco[11, 2] + coco[12, 2]) / 2
    knee_z = (coco[13, 2] + coco[14, 2]) / 2
    waist = hip_z + 0.3 * (sh_z - hip_z)
    P = PART
    torso = parts == P["torso"]
    upper_arm = np.isin(parts, [P["upper_arm_l"], P["upper_arm_r"]])
    lower_arm = np.isin(parts, [P["lower_arm_l"], P["lower_arm_r"]])
    upper_leg = np.isin(parts, [P["upper_leg_l"], P["upper_leg_r"]])
    lower_leg = np.isin(parts, [P["lower_leg_l"], P["lower_leg_r"]])
    feet = np.isin(parts, [P["foot_l"], P["foot_r"]])
    top = torso & (rv[:, 2] >= waist)
    if appearance["sleeves"] in ("short", "long"):
        elbow_z = (coco[7, 2] + coco[8, 2]) / 2
        top |= upper_arm & ((rv[:, 2] > (elbow_z + sh_z) / 2) | (appearance["sleeves"] == "long"))
    if appearance["sleeves"] == "long":
        top |= upper_arm | lower_arm
    bottom = (torso & (rv[:, 2] < waist)) | upper_leg
    if appearance["bottom_kind"] == "trousers":
        bottom |= lower_leg
    elif appearance["bottom_kind"] == "skirt":
        bottom |= lower_leg & (rv[:, 2] > knee_z - 0.05)
    else:  # shorts: mid-thigh
        bottom &= rv[:, 2] > (hip_z + knee_z) / 2
    reg[top] = REGIONS.index("top")
    reg[bottom] = REGIONS.index("bottom")
    if appearance["shoes"] is not None:
        ankle_z = (coco[15, 2] + coco[16, 2]) / 2
        reg[feet | (lower_leg & (rv[:, 2] < ankle_z + 0.03))] = REGIONS.index("shoes")
    if appearance["hair"] is not None:
        head = parts == P["head"]
        eye_z = (coco[1, 2] + coco[2, 2]) / 2
        ear_y, ear_z = (coco[3, 1] + coco[4, 1]) / 2, (coco[3, 2] + coco[4, 2]) / 2
        low = 0.10 if appearance["hair"]["long"] else 0.03
        hair = head & ((rv[:, 2] > eye_z + 0.045) | ((rv[:, 1] > ear_y + 0.01) & (rv[:, 2] > ear_z - low)))
        reg[hair] = REGIONS.index("hair")
    for name, sel in face_features(rv, coco, parts == P["head"]).items():
        reg[sel & (reg == REGIONS.index("skin"))] = REGIONS.index(name)
    return reg


def face_features(rest_vertices: np.ndarray, coco: np.ndarray, head: np.ndarray) -> dict:
    """Vertex masks of the eyes, brows and lips painted on the face.

    A blank face looks the same as the back of a head: mediapipe took 19 of 97 front views of blank-faced
    held-out renders for people facing away (docs/RESULTS.md). Painted features give it what a photo has."""
    rv = rest_vertices
    scale = np.linalg.norm(coco[1] - coco[2]) / 0.062
    out = {}
    for name, f in FACE_FEATURES.items():
        centres = (coco[1], coco[2]) if f["centre"] == "eye" else (coco[0],)
        sel = np.zeros(len(rv), bool)
        for c in centres:
            sel |= ((np.abs(rv[:, 0] - c[0]) < f["half_x"] * scale)
                    & (np.abs(rv[:, 2] - (c[2] + f["dz"] * scale)) < f["half_z"] * scale)
                    & (rv[:, 1] < c[1]))  # the front of the head only
        out[name] = head & sel
    return out


def dress(body: Body, regions: np.ndarray, thickness: float) -> np.ndarray:
    """The rendered surface: clothed vertices (top, bottom, shoes, hair) pushed out along the normal."""
    w = np.zeros(len(regions))
    w[regions == REGIONS.index("top")] = 1.0
    w[regions == REGIONS.index("bottom")] = 1.0
    w[regions == REGIONS.index("shoes")] = 0.8
    w[regions == REGIONS.index("hair")] = 0.6
    if thickness <= 0 or not w.any():  # painted regions (the face) add no thickness
        return body.vertices.copy()
    n = vertex_normals(body.vertices, body.faces)
    return body.vertices + n * (thickness * w)[:, None]


# ------------------------------------------------------------------------------------------- bpy

def _clear_scene(bpy):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def _cloth_material(bpy, name, spec, is_skin=False):
    mat = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):  # always on (and deprecated) from Blender 5
        mat.use_nodes = True
    nt = mat.node_tree
    bsdf = nt.nodes.get("Principled BSDF")
    bsdf.inputs["Roughness"].default_value = spec.get("roughness", 0.5)
    col = list(spec["colour"]) + [1.0]
    mat.diffuse_color = col
    tex = spec.get("texture", "plain")
    if is_skin or tex == "plain":
        bsdf.inputs["Base Color"].default_value = col
        return mat
    coord = nt.nodes.new("ShaderNodeTexCoord")
    mix = nt.nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    mix.inputs[6].default_value = col
    mix.inputs[7].default_value = list(spec["colour2"]) + [1.0]
    if tex in ("noise", "denim"):  # denim: a fine, detailed noise between two close blues (twill)
        t = nt.nodes.new("ShaderNodeTexNoise")
        t.inputs["Scale"].default_value = spec["scale"] * (8.0 if tex == "denim" else 1.0)
        if tex == "denim":
            t.inputs["Detail"].default_value = 8.0
        out = t.outputs["Fac"]
    elif tex == "stripes":
        t = nt.nodes.new("ShaderNodeTexWave")
        t.inputs["Scale"].default_value = spec["scale"] / 4
        out = t.outputs["Fac"]
    else:
        t = nt.nodes.new("ShaderNodeTexChecker")
        t.inputs["Scale"].default_value = spec["scale"]
        out = t.outputs["Fac"]
    nt.links.new(coord.outputs["Object"], t.inputs["Vector"])
    nt.links.new(out, mix.inputs[0])
    nt.links.new(mix.outputs[2], bsdf.inputs["Base Color"])
    return mat


def _add_mesh(bpy, scene, name, vertices, faces, face_material=None):
    """A smooth-shaded mesh object from arrays (core.blender_mesh), linked into the scene."""
    obj = bpy.data.objects.new(name, mesh_from_arrays(name, vertices, faces, material_index=face_material))
    scene.collection.objects.link(obj)
    return obj


def _add_person(bpy, scene, app: dict, vertices, faces, regions):
    """The body with one material per clothing region (skin where a region is absent)."""
    nf = len(faces)
    face_region = np.max(regions[faces], axis=1) if len(regions) else np.zeros(nf, np.int64)
    obj = _add_mesh(bpy, scene, "person", vertices, faces, face_region)
    for region in REGIONS:
        if region in FACE_FEATURES:
            spec, painted = _face_material(region, app), True
        elif region == "skin" or app.get(region) is None:
            spec, painted = app["skin"], True
        else:
            spec, painted = app[region], False
        obj.data.materials.append(_cloth_material(bpy, region, spec, is_skin=painted))


def _face_material(region: str, app: dict) -> dict:
    """Eyes dark (lashes and iris: at the renders' sizes an eye is a dark spot), brows the hair's colour,
    lips a redder, darker skin. Derived from the sampled look, so no new random draw moves a seed's scene."""
    skin = np.asarray(app["skin"]["colour"])
    if region == "eyes":
        colour = np.array([0.03, 0.025, 0.02])
    elif region == "brows":
        colour = np.asarray(app["hair"]["colour"]) if app.get("hair") else skin * 0.3
    else:
        colour = skin * np.array([0.8, 0.5, 0.5])
    return dict(colour=colour.tolist(), roughness=0.45 if region == "lips" else 0.6)


def _add_garments(bpy, scene, garments):
    """Each garment (train.garments.Garment) its own object and cloth material."""
    for i, g in enumerate(garments):
        obj = _add_mesh(bpy, scene, f"{g.kind}{i}", g.vertices, g.faces)
        obj.data.materials.append(_garment_material(bpy, f"{g.kind}{i}", g.spec["material"]))


def _garment_material(bpy, name, spec):
    """Cloth, not painted skin: the print of _cloth_material, a fine weave bump (millimetre noise in object
    space) and a soft sheen."""
    mat = _cloth_material(bpy, name, spec)
    nt = mat.node_tree
    bsdf = nt.nodes.get("Principled BSDF")
    coord = nt.nodes.new("ShaderNodeTexCoord")
    weave = nt.nodes.new("ShaderNodeTexNoise")
    weave.inputs["Scale"].default_value = 300.0
    bump = nt.nodes.new("ShaderNodeBump")
    bump.inputs["Strength"].default_value = 0.25
    nt.links.new(coord.outputs["Object"], weave.inputs["Vector"])
    nt.links.new(weave.outputs["Fac"], bump.inputs["Height"])
    nt.links.new(bump.outputs["Normal"], bsdf.inputs["Normal"])
    for key in ("Sheen Weight", "Sheen"):  # Blender 4+ / 3.x
        if key in bsdf.inputs:
            bsdf.inputs[key].default_value = 0.3
            break
    return mat


def _add_camera(bpy, scene, cam_p: dict):
    """Our camera frame (x right, y down, z fwd) is Blender's (x, -y, -z)."""
    import mathutils

    cam_data = bpy.data.cameras.new("camera")
    cam_data.sensor_fit = "HORIZONTAL"
    cam_data.sensor_width = cam_p["sensor_mm"]
    ch, cw = cam_p["canvas_hw"]
    cam_data.lens = cam_p["focal_px"] / cw * cam_p["sensor_mm"]
    cam_data.clip_start, cam_data.clip_end = 0.05, 100.0
    cam = bpy.data.objects.new("camera", cam_data)
    R = np.asarray(cam_p["R_world_to_cam"])
    M = np.eye(4)
    M[:3, 0], M[:3, 1], M[:3, 2] = R[0], -R[1], -R[2]
    M[:3, 3] = cam_p["cam_pos"]
    cam.matrix_world = mathutils.Matrix(M.tolist())
    scene.collection.objects.link(cam)
    scene.camera = cam


def _add_lights(bpy, scene, lights: list):
    import mathutils

    for i, lp in enumerate(lights):
        kind = {"sun": "SUN", "area": "AREA", "point": "POINT"}[lp["kind"]]
        ld = bpy.data.lights.new(f"light{i}", kind)
        ld.color = lp["colour"]
        if kind == "SUN":
            ld.energy = lp["strength"]
        else:
            ld.energy = lp["power"]
        if kind == "AREA":
            ld.size = lp["size"]
        lo = bpy.data.objects.new(f"light{i}", ld)
        lo.location = lp["position"]
        d = np.asarray(lp["target"]) - np.asarray(lp["position"])
        lo.rotation_euler = mathutils.Vector(d.tolist()).to_track_quat("-Z", "Y").to_euler()
        scene.collection.objects.link(lo)


def _add_world(bpy, scene, wp: dict):
    world = bpy.data.worlds.new("world")
    if bpy.app.version < (5, 0, 0):
        world.use_nodes = True
    scene.world = world
    bg = world.node_tree.nodes.get("Background")
    bg.inputs["Strength"].default_value = wp["strength"]
    bg.inputs["Color"].default_value = list(wp["colour"]) + [1.0]
    if wp["kind"] == "sky":
        try:
            sky = world.node_tree.nodes.new("ShaderNodeTexSky")
            try:
                sky.sun_elevation = math.radians(wp["sun_elevation_deg"])
                sky.sun_rotation = math.radians(wp["sun_rotation_deg"])
            except AttributeError:
                pass
            world.node_tree.links.new(sky.outputs["Color"], bg.inputs["Color"])
            bg.inputs["Strength"].default_value = wp["strength"] * 0.3
        except Exception:  # a Blender without the sky node: keep the colour world
            pass


def _render_settings(scene, params: dict, resolution_hw):
    r = scene.render
    r.resolution_y, r.resolution_x = int(resolution_hw[0]), int(resolution_hw[1])
    r.resolution_percentage = 100
    r.film_transparent = True
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGBA"
    r.image_settings.color_depth = "8"
    scene.view_settings.view_transform = "Standard"
    if params["engine"] == "workbench":
        r.engine = "BLENDER_WORKBENCH"
        scene.display.shading.light = "STUDIO"
        scene.display.shading.color_type = "MATERIAL"
        scene.display.render_aa = "8"
        return
    r.engine = "CYCLES"
    c = scene.cycles
    c.device = "CPU"
    c.samples = int(params["samples"])
    c.use_adaptive_sampling = False
    c.seed = int(params["render_seed"]) % (2 ** 31)
    c.use_denoising = bool(params["denoise"])
    if params["denoise"]:
        c.denoiser = "OPENIMAGEDENOISE"
    c.max_bounces = 4
    c.diffuse_bounces = 2
    c.glossy_bounces = 2
    c.transmission_bounces = 2
    c.transparent_max_bounces = 4
    c.caustics_reflective = False
    c.caustics_refractive = False
    c.pixel_filter_type = "BOX"
    c.filter_width = 1.0


def build_scene(params: dict, vertices: np.ndarray, faces: np.ndarray, regions: np.ndarray,
                resolution_hw, garments=()) -> "object":
    """Build the Blender scene for one sample from its parameters (and its garments' meshes, if any).
    Returns bpy.context.scene."""
    import bpy

    scene = _clear_scene(bpy)
    _add_person(bpy, scene, params["appearance"], vertices, faces, regions)
    _add_garments(bpy, scene, garments)
    _add_camera(bpy, scene, params["camera"])
    _add_lights(bpy, scene, params["lighting"]["lights"])
    _add_world(bpy, scene, params["lighting"]["world"])
    _render_settings(scene, params, resolution_hw)
    return scene
