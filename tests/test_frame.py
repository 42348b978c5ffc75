import numpy as np
import pytest

from core import frame
from core.errors import MonohumanError


def _person_points():
    """A few volume-frame points: head top, feet, a nose toward the camera, the image-right hand."""
    return np.array([
        [50.0, 10.0, 40.0],   # head top (small y = up)
        [44.0, 110.0, 42.0],  # right foot (image left)
        [56.0, 110.0, 42.0],  # left foot
        [50.0, 20.0, 30.0],   # nose: small z = toward the camera
        [70.0, 60.0, 40.0],   # hand on the image right (large x)
        [50.0, 60.0, 50.0],   # back
    ])


def test_metric_frame_feet_height_centre_facing():
    pts = _person_points()
    T = frame.metric_transform(pts, subject_height=1.8)
    m = frame.apply_transform(pts, T)
    assert m[:, 2].min() == pytest.approx(0.0, abs=1e-12)           # feet on Z = 0
    assert m[:, 2].max() == pytest.approx(1.8)                       # height as asked
    lo, hi = m.min(0), m.max(0)
    assert (lo[0] + hi[0]) / 2 == pytest.approx(0.0, abs=1e-12)      # centred in X
    assert (lo[1] + hi[1]) / 2 == pytest.approx(0.0, abs=1e-12)      # centred in Y
    nose, back, hand = m[3], m[5], m[4]
    assert nose[1] < 0 and nose[1] < back[1]                         # faces -Y
    assert hand[0] > 0                                               # image right = +X
    assert m[0, 2] > m[3, 2] > m[1, 2]                               # Z up
    assert np.linalg.det(T[:3, :3]) > 0                              # a rotation: winding survives


def test_default_height_and_uniform_scale():
    pts = _person_points()
    T = frame.metric_transform(pts)
    m = frame.apply_transform(pts, T)
    assert m[:, 2].max() == pytest.approx(frame.DEFAULT_SUBJECT_HEIGHT)
    s = 1.70 / 100.0
    # distances scale uniformly
    assert np.linalg.norm(m[3] - m[5]) == pytest.approx(s * np.linalg.norm(pts[3] - pts[5]))


def test_inverse_and_shapes():
    pts = _person_points()
    T = frame.metric_transform(pts, 1.62)
    mpts = frame.apply_transform(pts, T)
    np.testing.assert_allclose(frame.apply_transform(mpts, np.linalg.inv(T)), pts, atol=1e-9)  # back
    # the same T for anything in the same volume, any leading shape
    grid = pts.reshape(2, 3, 3)
    np.testing.assert_allclose(frame.apply_transform(grid, T).reshape(-1, 3), mpts)


def test_errors():
    pts = _person_points()
    with pytest.raises(MonohumanError):
        frame.metric_transform(pts, subject_height=0)
    with pytest.raises(MonohumanError):
        frame.metric_transform(np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0]]))  # no height
    with pytest.raises(MonohumanError):
        frame.metric_transform(np.full((3, 3), np.nan))
    with pytest.raises(ValueError):
        frame.metric_transform(np.zeros((3, 2)))
