import threading
from pathlib import Path

import numpy as np
import pytest

from core.detect import Detection, _one_person, detect_person
from core.errors import NoPersonError
from core.image_io import load_image

ASTRONAUT = Path(__import__("skimage").__file__).parent / "data" / "astronaut.png"  # ships in the wheel


def fixture_or_none(request, name):
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        return None


def check_detection(det, shape):
    h, w = shape[:2]
    assert isinstance(det, Detection)
    assert det.landmarks33.shape == (33, 4) and det.landmarks16.shape == (16, 3)
    assert det.mask.shape == (h, w) and det.mask.dtype == np.float32
    assert 0 <= det.mask.min() and det.mask.max() <= 1
    ys, xs = np.nonzero(det.mask > 0.5)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    margin = 0.05 * (y1 - y0)
    seen = det.landmarks16[det.landmarks16[:, 2] > 0.5]
    assert len(seen) >= 4
    assert ((seen[:, 0] > x0 - margin) & (seen[:, 0] < x1 + margin)
            & (seen[:, 1] > y0 - margin) & (seen[:, 1] < y1 + margin)).all()


def test_blank_image_is_no_person():
    with pytest.raises(NoPersonError) as e:
        detect_person(np.full((240, 320, 3), 127, np.uint8), name="blank.png")
    assert "No person found in blank.png" in e.value.problem and e.value.fix


def test_rejects_non_rgb():
    with pytest.raises(ValueError):
        detect_person(np.zeros((10, 10), np.uint8))


def test_real_photo_and_large_photo_in_source_pixels():
    rgb = load_image(ASTRONAUT)
    det = detect_person(rgb)
    check_detection(det, rgb.shape)
    assert any("upper body" in w for w in det.warnings)  # a half-body photo: no hips, no legs
    big = np.repeat(np.repeat(rgb, 3, axis=0), 3, axis=1)  # 1536 px: shrunk for the detector
    det_big = detect_person(big)
    check_detection(det_big, big.shape)
    thorax, thorax_big = det.landmarks16[7, :2], det_big.landmarks16[7, :2]
    assert np.abs(thorax_big - 3 * thorax).max() < 0.03 * 1536


def test_threads_share_one_detector():
    rgb = load_image(ASTRONAUT)[::2, ::2].copy()
    results, errors = [], []

    def run():
        try:
            results.append(detect_person(rgb))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    np.testing.assert_allclose(results[0].landmarks33, results[2].landmarks33)


def test_several_people_keeps_the_one_with_the_pose():
    mask = np.zeros((100, 200), np.float32)
    mask[10:90, 10:60] = 1.0  # larger blob
    mask[20:80, 120:160] = 1.0  # the blob the landmarks lie on
    mask[20:80, 119] = 0.3  # its soft edge survives
    xy = np.c_[np.linspace(125, 155, 10), np.linspace(25, 75, 10)]
    kept, note = _one_person(mask, xy, np.ones(10))
    assert "Several people" in note
    assert kept[:, :100].max() == 0 and kept[20:80, 120:160].min() == 1 and kept[50, 119] == pytest.approx(0.3)
    kept, note = _one_person(mask, xy, np.zeros(10))  # no reliable landmarks: the largest
    assert note == "Several people found; reconstructing the largest." and kept[:, 100:].max() == 0
    alone = mask.copy()
    alone[10:90, 10:60] = 0
    alone[5:7, 5:7] = 1.0  # a speck is not a person
    kept, note = _one_person(alone, xy, np.ones(10))
    assert note is None and kept[5:7, 5:7].max() == 0


def test_rendered_person(request):
    photo = fixture_or_none(request, "person_photo")
    if photo is None:
        pytest.skip("fixture 'person_photo' is not defined yet (tests/conftest.py adds it)")
    rgb = load_image(photo)
    det = detect_person(rgb)
    check_detection(det, rgb.shape)
    truth = fixture_or_none(request, "person_photo_mask")
    if truth is None:
        return
    truth = load_image(truth)[:, :, 0] > 127 if isinstance(truth, (str, Path)) else np.asarray(truth) > 0.5
    pred = det.mask > 0.5
    iou = (pred & truth).sum() / (pred | truth).sum()
    assert iou > 0.8, f"mask IoU with the rendered mask is {iou:.3f}"


def test_person_filling_the_frame_is_found_with_room_added(tiny_dataset):
    """The tiny dataset's 64 px crops (the person fills 85 % of the height), enlarged: one mediapipe pass misses
    many of them; detect_person looks again with a border added and maps the result back to the photo."""
    import cv2

    from core import detect
    from core.errors import NoPersonError
    from train.samples import read_sample

    plain = found = 0
    errors = []
    for path in sorted((tiny_dataset / "samples").glob("*.npz")):
        s = read_sample(path, volume=False)
        rgb = cv2.resize(s["rgb"], None, fx=8, fy=8, interpolation=cv2.INTER_CUBIC)
        with detect._LOCK:
            plain += detect._pose().process(detect._shrink(rgb)).pose_landmarks is not None
        try:
            det = detect.detect_person(rgb)
        except NoPersonError:
            continue
        found += 1
        check_detection(det, rgb.shape)
        errors.append(np.median(np.linalg.norm(det.landmarks16[:, :2] / 8 - s["landmarks16"][:, :2], axis=1)))
    assert found > plain, (found, plain)
    assert np.median(errors) < 4.0  # 64 px crops: the landmarks land where the body's are


def test_mirror_pass_is_combined_landmark_by_landmark():
    """combine_passes: the surer pass leads, landmarks the passes agree on are averaged (as sure as the less sure
    pass), a limb one pass put somewhere absurd comes from the leader alone."""
    from core.detect import BODY, combine_passes
    from core.landmarks import FLIP_33

    assert sorted(FLIP_33) == list(range(33)) and [FLIP_33[i] for i in FLIP_33] == list(range(33))
    assert FLIP_33[11] == 12 and FLIP_33[23] == 24 and FLIP_33[0] == 0 and FLIP_33[1] == 4
    rng = np.random.default_rng(0)
    lm = np.c_[rng.uniform(100, 300, (33, 2)), np.zeros(33), np.full(33, 0.9)].astype(np.float32)
    lm[[11, 12, 23, 24], :2] = [[180, 100], [220, 100], [185, 250], [215, 250]]  # a 150 px torso
    sure, unsure = lm.copy(), lm.copy()
    unsure[:, :2] += 4.0                    # agrees everywhere but ...
    unsure[15, :2] = [900.0, 900.0]         # ... one wrist far away
    unsure[BODY, 3] = 0.5
    seg_a, seg_b = np.zeros((4, 4), np.float32), np.ones((4, 4), np.float32)
    world = np.zeros((33, 3), np.float32)
    for first, second, seg in (((sure, seg_a, world), (unsure, seg_b, world), seg_a),
                               ((unsure, seg_b, None), (sure, seg_a, world), seg_a)):  # the order does not matter
        out, mask, _ = combine_passes(first, second)
        np.testing.assert_allclose(out[15, :2], sure[15, :2])           # the leader's wrist
        np.testing.assert_allclose(out[11, :2], sure[11, :2] + 2.0)     # averaged
        assert out[11, 3] == pytest.approx(0.5) and out[15, 3] == pytest.approx(0.9)
        np.testing.assert_array_equal(mask, seg)


def test_mirror_pass_sees_the_same_person():
    """On a real photo the mirrored pass lands where the plain one does (the flip and the left/right swap are
    undone): the two detections' shoulders are within 3 % of the photo's width and keep their sides."""
    rgb = load_image(ASTRONAUT)
    one, two = detect_person(rgb, mirror=False), detect_person(rgb)
    check_detection(two, rgb.shape)
    assert np.abs(one.landmarks33[[11, 12], :2] - two.landmarks33[[11, 12], :2]).max() < 0.03 * rgb.shape[1]
    assert two.landmarks33[11, 0] > two.landmarks33[12, 0]  # the person's left shoulder on the image's right
