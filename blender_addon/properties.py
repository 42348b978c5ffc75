"""Per-scene settings of the Monohuman panel (Scene.monohuman)."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import paths

METHOD_ITEMS = (
    ("vrn", "VRN", "Volumetric regression: a detailed surface (clothes, hair); rigged through HumanMeshNet"),
    ("hmnet", "HumanMeshNet", "Template body regression: the Anny body with its rig"),
    ("fit", "Fitted body", "The Anny body fitted to what the detector sees (pose landmarks, mask), posed as "
                           "in the photo, with its rig"),
)


def _model_search(self, context, edit_text):
    """(name, description) pairs: "default", the models that serve this method (their headline metric shown),
    and "none" for the fit (start from Anny's rest pose)."""
    from .preferences import backend_python, get_prefs

    prefs = get_prefs(context)
    items = [("default", f"the {self.method} method's default model")]
    items += [(e.name, paths.model_description(e))
              for e in paths.list_models(prefs.models_dir, backend_python(prefs), self.method)]
    if self.method == "fit":
        items.append(("none", "no network: start the fit from Anny's rest pose"))
    return [it for it in items if edit_text.lower() in it[0].lower()] or items


KEEP_POSE_DEFAULT = 0.5  # core.bodyfit.KEEP_POSE (the add-on does not import core)


class MonohumanProperties(bpy.types.PropertyGroup):
    photo_source: EnumProperty(
        name="Photo Source",
        items=(("FILE", "File", "A photo file on disk"),
               ("IMAGE", "Image", "An image already loaded in Blender")),
        default="FILE")
    photo_path: StringProperty(name="Photo", description="The photo of the person (JPEG, PNG, WebP)",
                               subtype="FILE_PATH", default="")
    photo_image: PointerProperty(name="Image", type=bpy.types.Image,
                                 description="An image already loaded in Blender")
    method: EnumProperty(name="Method", items=METHOD_ITEMS, default="fit")  # best measured on photos
    model: StringProperty(
        name="Model",
        description="A model name (shipped or in your models folder), 'default' for the method's default, "
                    "or a path to NAME (without .json/.safetensors)",
        default="default", search=_model_search)
    subject_height: FloatProperty(name="Subject Height", description="The person's height; sets the scale",
                                  default=1.70, min=0.3, max=3.0, soft_min=0.5, soft_max=2.3,
                                  subtype="DISTANCE", unit="LENGTH", precision=2)
    smoothing: IntProperty(name="Smoothing", description="Surface smoothing iterations (0 = raw surface)",
                           default=10, min=0, max=50)
    face_budget: IntProperty(name="Face Budget", description="Decimate to at most this many faces (0 = keep all)",
                             default=0, min=0, soft_max=500000)
    project_texture: BoolProperty(name="Project Photo as Texture", default=True,
                                  description="Material that projects the photo onto the front; the back is "
                                              "filled with the person's mean colour")
    add_armature: BoolProperty(name="Add Armature", default=True,
                               description="Rig the body so it can be posed: Anny's armature and skin weights "
                                           "(VRN surfaces take them from a HumanMeshNet body fitted to them)")
    body_parts: BoolProperty(name="Hands and Feet from the Body", default=True,
                             description="VRN: the fitted body's hands and feet replace the surface's (a volume "
                                         "cannot resolve fingers and toes); off keeps the raw volume surface")
    match_mask: BoolProperty(name="Match the Photo's Outline", default=True,
                             description="VRN: where the person mask shows the person, the surface takes what "
                                         "the network saw there even faintly, and nothing off the mask; off "
                                         "keeps the network's own outline")
    # A refit's pull towards the rig's pose (core.reconstruct.fit_person's keep_pose): chosen on held-out renders
    # whose true pose, turned by 5 or 10 degrees a bone, stood in for an animator's correction (docs/RESULTS.md).
    keep_pose: FloatProperty(name="Keep Rig Pose", default=KEEP_POSE_DEFAULT, min=0.0, soft_max=2.0, precision=3,
                             description="Refit: how closely the body keeps the rig's pose where the photo cannot "
                                         "tell (which limb is nearer); 0 lets the photo decide everything")
    show_landmarks: BoolProperty(name="Show Landmarks", default=False,
                                 description="Load the photo with the detected landmarks drawn as an image "
                                             "(shown in any open Image Editor)")


def register():
    bpy.utils.register_class(MonohumanProperties)
    bpy.types.Scene.monohuman = PointerProperty(type=MonohumanProperties)


def unregister():
    del bpy.types.Scene.monohuman
    bpy.utils.unregister_class(MonohumanProperties)
