"""train.scene's painted face: eyes, brows and lips on the front of a real Anny head, where a face has them."""

import numpy as np
import pytest

from train.bodies import PART, make_anny_body, topology
from train.scene import REGIONS, FACE_FEATURES, SceneConfig, clothing_regions, face_features, sample_appearance


@pytest.fixture(scope="module")
def body():
    return make_anny_body(np.random.default_rng(0), pose_kind="standing")


def test_face_features_sit_where_a_face_has_them(body):
    rv = body.rest_vertices
    coco = topology().kp_weights @ rv
    masks = face_features(rv, coco, body.parts == PART["head"])
    assert set(masks) == set(FACE_FEATURES)
    for name, sel in masks.items():
        assert sel.sum() >= 5, f"{name}: too few vertices to show"
        assert (body.parts[sel] == PART["head"]).all()
        assert (rv[sel, 1] < coco[3:5, 1].mean()).all(), f"{name} reaches behind the ears"  # -y is the front
    eyes, brows, lips = (rv[masks[k]] for k in ("eyes", "brows", "lips"))
    # one eye and one brow each side of the face's middle, the brows above the eyes, the lips under the nose
    for pts in (eyes, brows):
        assert (pts[:, 0] > 0.01).sum() >= 5 and (pts[:, 0] < -0.01).sum() >= 5
    assert brows[:, 2].mean() > eyes[:, 2].mean() > coco[0, 2] > lips[:, 2].max()
    assert abs(lips[:, 0].mean()) < 0.005


def test_face_is_painted_on_skin_only(body):
    app = sample_appearance(np.random.default_rng(1), SceneConfig(p_hair=1.0))
    regions = clothing_regions(body, app)
    for name in FACE_FEATURES:
        assert (regions == REGIONS.index(name)).sum() >= 5
    app["hair"]["long"] = True  # hair over the brow band would hide them: the hair region keeps its vertices
    bare = dict(app, hair=None)
    hair = clothing_regions(body, bare) != clothing_regions(body, app)
    assert not np.isin(clothing_regions(body, app)[hair], [REGIONS.index(k) for k in FACE_FEATURES]).any()
