import numpy as np
import pytest

from core.errors import MonohumanError
from core.surface import extract_surface, signed_volume, surface_to_metric


def _centres(shape):
    """Volume-frame coordinates (x, y, z) of every voxel centre, each (D, H, W)."""
    d, h, w = np.meshgrid(*[np.arange(n) + 0.5 for n in shape], indexing="ij")
    return w, h, d


def _ball(shape, centre_xyz, r, soft=False):
    x, y, z = _centres(shape)
    dist = np.sqrt((x - centre_xyz[0]) ** 2 + (y - centre_xyz[1]) ** 2 + (z - centre_xyz[2]) ** 2)
    if soft:  # a probability ramp crossing 0.5 exactly at the radius
        return np.clip(r - dist + 0.5, 0.0, 1.0).astype(np.float32)
    return dist <= r


@pytest.mark.parametrize("smooth", [0, 10])
def test_sphere_watertight_volume_extent_centre(smooth):
    r = 20.0
    vol = _ball((64, 64, 64), (32, 32, 32), r)
    m = extract_surface(vol, smooth_iterations=smooth)
    assert m.is_watertight
    shell = 4 * np.pi * r**2 * 1.0
    assert abs(m.volume - 4 / 3 * np.pi * r**3) < shell
    assert signed_volume(m.vertices, m.faces) > 0  # outward winding
    np.testing.assert_allclose(m.bounds, [[12, 12, 12], [52, 52, 52]], atol=1.0)
    np.testing.assert_allclose(m.vertices.mean(0), [32, 32, 32], atol=0.1)
    # vertex normals point outward
    radial = m.vertices - 32.0
    assert np.all(np.einsum("ij,ij->i", m.vertex_normals, radial) > 0)
    assert m.metadata["frame"] == "volume"


def test_axis_order_and_soft_radius():
    # (D, H, W) differ, centre differs per axis: catches any swapped axis or half-voxel slip
    shape = (40, 56, 48)
    c = (21.0, 30.0, 17.5)  # x (w), y (h), z (d)
    m = extract_surface(_ball(shape, c, 12.0, soft=True), smooth_iterations=0)
    np.testing.assert_allclose(m.vertices.mean(0), c, atol=0.05)
    radii = np.linalg.norm(m.vertices - c, axis=1)
    assert abs(radii.mean() - 12.0) < 0.1
    m_s = extract_surface(_ball(shape, c, 12.0, soft=True))  # Taubin does not shrink
    assert abs(np.linalg.norm(m_s.vertices - c, axis=1).mean() - 12.0) < 0.1


@pytest.mark.parametrize("smooth", [0, 10])
def test_box_volume_and_extent(smooth):
    vol = np.zeros((30, 40, 50), bool)
    vol[5:25, 8:30, 10:44] = True  # d 5..25, h 8..30, w 10..44
    m = extract_surface(vol, smooth_iterations=smooth)
    assert m.is_watertight
    sx, sy, sz = 34, 22, 20
    area = 2 * (sx * sy + sy * sz + sx * sz)
    assert abs(m.volume - sx * sy * sz) < area * 1.0
    np.testing.assert_allclose(m.bounds, [[10, 8, 5], [44, 30, 25]], atol=1.0)


def test_touching_the_border_still_closes():
    vol = np.zeros((16, 20, 24), bool)
    vol[:, 4:20, :] = True  # touches five faces of the volume
    m = extract_surface(vol, smooth_iterations=0)
    assert m.is_watertight
    np.testing.assert_allclose(m.bounds, [[0, 4, 0], [24, 20, 16]], atol=1e-9)
    assert m.volume == pytest.approx(24 * 16 * 16, rel=0.01)


def test_largest_component_and_cavity():
    vol = _ball((48, 48, 48), (24, 24, 24), 14)
    vol |= _ball((48, 48, 48), (4, 4, 4), 2.5)  # a floating blob
    vol &= ~_ball((48, 48, 48), (24, 24, 24), 5)  # an inner cavity
    m = extract_surface(vol, smooth_iterations=0)
    assert m.is_watertight and len(m.split(only_watertight=False)) == 1
    assert m.bounds[0].min() > 8  # the blob is gone
    assert m.volume == pytest.approx(4 / 3 * np.pi * 14**3, rel=0.05)  # outer surface only
    both = extract_surface(vol, smooth_iterations=0, keep_largest=False)
    assert len(both.faces) > len(m.faces)


def test_face_budget_resample():
    vol = _ball((64, 64, 64), (32, 32, 32), 20)
    full = extract_surface(vol)
    budget = len(full.faces) // 5
    m = extract_surface(vol, face_budget=budget)
    assert 0 < len(m.faces) <= budget
    assert len(m.faces) > budget // 2  # not wildly under
    assert m.is_watertight
    assert abs(m.volume - full.volume) < 4 * np.pi * 20**2 * 1.0
    np.testing.assert_allclose(m.vertices.mean(0), [32, 32, 32], atol=0.3)
    # no budget needed when already small enough
    assert len(extract_surface(vol, face_budget=10**7).faces) == len(full.faces)


def test_face_budget_quadric_when_available():
    pytest.importorskip("fast_simplification")
    vol = _ball((64, 64, 64), (32, 32, 32), 20)
    m = extract_surface(vol, face_budget=2000, decimation="quadric")
    assert len(m.faces) <= 2000


def test_empty_volume_errors():
    with pytest.raises(MonohumanError, match="empty volume"):
        extract_surface(np.zeros((16, 16, 16), np.float32))
    with pytest.raises(MonohumanError, match="empty volume"):
        extract_surface(np.full((16, 16, 16), 0.3, np.float32))
    with pytest.raises(MonohumanError, match="empty volume"):
        extract_surface(np.full((8, 8, 8), np.nan, np.float32))
    with pytest.raises(ValueError):
        extract_surface(np.zeros((16, 16)))


def _person_volume():
    """Tall (D, H, W) = (24, 64, 32) volume: a body ellipsoid, a nose toward the camera (small z),
    and an arm on the image right (large x)."""
    shape = (24, 64, 32)
    x, y, z = _centres(shape)
    body = ((x - 16) / 6) ** 2 + ((y - 34) / 26) ** 2 + ((z - 12) / 5) ** 2 <= 1
    nose = (x - 16) ** 2 + (y - 14) ** 2 + (z - 6.5) ** 2 <= 2.5**2
    arm = (np.abs(x - 24) <= 3) & (np.abs(y - 30) <= 2) & (np.abs(z - 12) <= 2)
    return body | nose | arm


def test_surface_to_metric_person():
    m_vox = extract_surface(_person_volume())
    m, T = surface_to_metric(m_vox, subject_height=1.75)
    V = m.vertices
    assert V[:, 2].min() == pytest.approx(0.0, abs=1e-9)
    assert V[:, 2].max() == pytest.approx(1.75)
    lo, hi = V.min(0), V.max(0)
    np.testing.assert_allclose((lo[:2] + hi[:2]) / 2, 0.0, atol=1e-9)
    # the nose (the most forward point) is at negative Y, the arm at positive X, near the top half
    nose = V[np.argmin(V[:, 1])]
    assert nose[1] < -0.05 and nose[2] > 1.3
    arm = V[np.argmax(V[:, 0])]
    assert arm[0] > 0.15
    assert m.is_watertight and signed_volume(V, m.faces) > 0
    assert m.metadata["frame"] == "metric"
    np.testing.assert_allclose(m.vertices, V)  # transform returned is the one applied
    from core.frame import apply_transform
    np.testing.assert_allclose(apply_transform(m_vox.vertices, T), V, atol=1e-9)
