"""train.voxelise: occupancy of meshes in the image-aligned volume frame, and the projection into it."""

import numpy as np
import pytest
import trimesh

from core.errors import DataError
from train.voxelise import mesh_is_closed, project_to_volume, scale_vertices, voxelise


def sphere(subdivisions=4, radius=20.0, centre=(32.3, 31.7, 32.1)):
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return m.vertices + np.asarray(centre), np.asarray(m.faces)


@pytest.mark.parametrize("method", ["parity", "winding", "auto"])
def test_sphere_volume_matches_analytic(method):
    v, f = sphere()
    occ = voxelise(v, f, (64, 64, 64), method=method)
    assert occ.shape == (64, 64, 64) and occ.dtype == bool
    analytic = 4.0 / 3.0 * np.pi * 20.0 ** 3
    assert abs(occ.sum() / analytic - 1) < 0.01


@pytest.mark.parametrize("method", ["parity", "winding", "auto"])
def test_box_volume_matches_analytic(method):
    extents = np.array([30.0, 24.0, 20.0])
    box = trimesh.creation.box(extents=extents)
    lo = np.array([17.25, 20.25, 22.25])  # corners off the voxel-centre grid
    occ = voxelise(box.vertices - box.bounds[0] + lo, box.faces, (64, 64, 64), method=method)
    assert abs(occ.sum() / np.prod(extents) - 1) < 0.01
    d, h, w = np.nonzero(occ)
    assert (w.min(), w.max(), h.min(), h.max(), d.min(), d.max()) == (17, 46, 20, 43, 22, 41)


def test_voxel_centre_convention():
    """Voxel (d, h, w) has centre (w + .5, h + .5, d + .5): a small box around one centre fills one voxel."""
    box = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
    occ = voxelise(box.vertices + [7.5, 5.5, 3.5], box.faces, (8, 9, 10))
    assert occ.shape == (8, 9, 10)
    assert occ.sum() == 1 and occ[3, 5, 7]


def test_parity_and_winding_agree_on_closed_mesh():
    v, f = sphere(subdivisions=4, radius=17.0, centre=(24.1, 25.6, 23.3))
    parity = voxelise(v, f, (48, 48, 48), method="parity")
    winding = voxelise(v, f, (48, 48, 48), method="winding")
    assert parity.sum() > 10000
    assert (parity ^ winding).sum() == 0


def test_hole_does_not_fill_the_column_behind_it():
    v, f = sphere(subdivisions=3, radius=16.0, centre=(24.3, 23.7, 24.1))
    normals = trimesh.Trimesh(v, f, process=False).face_normals
    open_f = f[normals[:, 2] > -0.9]  # cut a cap facing the camera (-z)
    assert not mesh_is_closed(v, open_f)[0]
    D = 48
    back = 24.1 + 16.0  # the back of the sphere on the axis through the hole
    behind = slice(int(np.ceil(back + 1)), D)
    parity = voxelise(v, open_f, (D, 48, 48), method="parity")
    assert parity[behind, 24, 24].all()  # what goes wrong without winding numbers
    closed = voxelise(v, f, (D, 48, 48), method="parity")
    for method in ("winding", "auto"):
        occ = voxelise(v, open_f, (D, 48, 48), method=method)
        assert not occ[behind, 24, 24].any()
        assert not occ[behind].any()
        assert occ[24, 24, 24]  # the centre is still inside (winding number ~0.95)
        assert abs(occ.sum() / closed.sum() - 1) < 0.03


def test_inverted_and_seam_split_meshes():
    v, f = sphere(subdivisions=3, radius=12.0, centre=(16.2, 15.9, 16.4))
    ref = voxelise(v, f, (32, 32, 32), method="parity")
    assert (voxelise(v, f[:, ::-1], (32, 32, 32)) == ref).all()
    # every face with its own vertices (as along UV seams): still closed after merging positions
    v_split = v[f].reshape(-1, 3)
    f_split = np.arange(len(v_split)).reshape(-1, 3)
    assert mesh_is_closed(v_split, f_split) == (True, True)
    assert (voxelise(v_split, f_split, (32, 32, 32), method="auto") == ref).all()


def test_self_intersecting_closed_mesh_gives_the_union():
    a, fa = sphere(subdivisions=3, radius=10.0, centre=(13.3, 16.2, 16.1))
    b, fb = sphere(subdivisions=3, radius=10.0, centre=(19.7, 16.2, 16.1))
    v = np.concatenate([a, b])
    f = np.concatenate([fa, fb + len(a)])
    union = voxelise(a, fa, (32, 32, 32)) | voxelise(b, fb, (32, 32, 32))
    assert (voxelise(v, f, (32, 32, 32), method="auto") == union).all()
    assert not voxelise(v, f, (32, 32, 32), method="parity")[16, 16, 16]  # parity: XOR


def test_mesh_outside_or_cut_by_the_volume():
    v, f = sphere(subdivisions=3, radius=10.0, centre=(16.0, 16.0, 0.0))  # half in front of z = 0
    occ = voxelise(v, f, (32, 32, 32))
    assert abs(occ.sum() / (4 / 3 * np.pi * 1000 / 2) - 1) < 0.03  # the half at z > 0
    assert not voxelise(v + [100, 0, 0], f, (32, 32, 32)).any()
    assert not voxelise(v, np.zeros((0, 3), int), (32, 32, 32)).any()
    with pytest.raises(ValueError):
        voxelise(v, f, (32, 32, 32), method="magic")


def _crop(x0, y0, s):
    return lambda p: (np.asarray(p, dtype=np.float64) - [x0, y0]) * s


def test_project_to_volume_axis_and_mean_depth():
    shape = (96, 256, 128)
    crop = _crop(300.0, 100.0, 0.5)
    focal, principal = 1000.0, (512.0, 384.0)
    pts = np.array([[0.0, 0.0, 3.0], [0.3, -0.8, 2.9], [-0.2, 0.7, 3.1]])
    vox, ppm = project_to_volume(pts, focal, principal, crop, shape)
    assert np.allclose(vox[0, :2], crop(np.array([principal]))[0])  # optical axis -> crop-mapped pp
    assert np.isclose(vox[:, 2].mean(), shape[0] / 2)  # mean depth at D/2
    assert np.isclose(ppm, focal * 0.5 / 3.0)
    # isotropic: at the mean depth a step in x and the same step in depth move equally many voxels
    step = np.array([[0.0, 0.0, 3.0], [0.01, 0.0, 3.0], [0.0, 0.0, 3.01]])
    sv, _ = project_to_volume(step, focal, principal, crop, shape, mean_depth=3.0)
    assert np.isclose(sv[1, 0] - sv[0, 0], sv[2, 2] - sv[0, 2])
    assert np.isclose(sv[0, 2], shape[0] / 2)


def test_project_to_volume_rejects_bad_input():
    crop = _crop(0.0, 0.0, 0.25)
    with pytest.raises(DataError):
        project_to_volume(np.array([[0.0, 0.0, -1.0]]), 500.0, (64, 64), crop, (64, 64, 64))
    with pytest.raises(DataError):  # anisotropic crop mapping
        project_to_volume(np.array([[0.0, 0.0, 2.0]]), 500.0, (64, 64),
                          lambda p: np.asarray(p) * [0.25, 0.5], (64, 64, 64))


def test_front_view_is_the_projected_silhouette():
    """Voxelising the projected mesh: the columns with occupancy are the pixels the mesh covers."""
    m = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    cam = m.vertices * [1.0, 1.6, 1.0] + [0.1, -0.05, 2.0]  # an ellipsoid in front of the camera
    vox, _ = project_to_volume(cam, 120.0, (32.0, 32.0), _crop(0.0, 0.0, 1.0), (48, 64, 64))
    occ = voxelise(vox, m.faces, (48, 64, 64))
    # reference silhouette: pixel centres inside any projected triangle
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    p = np.stack([xx.ravel(), yy.ravel()], 1)
    tri = vox[m.faces][:, :, :2]
    covered = np.zeros(len(p), bool)
    for a, b, c in tri:
        d = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if d == 0:
            continue
        l1 = ((b[0] - p[:, 0]) * (c[1] - p[:, 1]) - (b[1] - p[:, 1]) * (c[0] - p[:, 0])) / d
        l2 = ((c[0] - p[:, 0]) * (a[1] - p[:, 1]) - (c[1] - p[:, 1]) * (a[0] - p[:, 0])) / d
        covered |= (l1 >= 0) & (l2 >= 0) & (1 - l1 - l2 >= 0)
    silhouette = occ.any(axis=0).ravel()
    assert covered.sum() > 500
    assert (silhouette != covered).sum() <= 0.01 * covered.sum()


def test_scale_vertices_about_centre():
    v, f = sphere(subdivisions=3, radius=10.0, centre=(16.0, 16.0, 16.0))
    big = scale_vertices(v, 1.2, centre=(16.0, 16.0, 16.0))
    ratio = voxelise(big, f, (32, 32, 32)).sum() / voxelise(v, f, (32, 32, 32)).sum()
    assert abs(ratio - 1.2 ** 3) < 0.03
