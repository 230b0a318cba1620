"""Negative pose: parity with the recorded official draws, the exact formula, seeded statistics, errors."""
import json

import numpy as np
import pytest

from steadydancer_core.pose.keypoints import PersonPose, PoseFrame, person_from_official
from steadydancer_core.pose.negative import NegativeDraw, draw_negative_params, negative_poses, perturb_person


@pytest.fixture(scope="module")
def fixture(shared_dir):
    return json.loads((shared_dir / "data/parity/pose_a/fixture.json").read_text())


def test_parity_with_recorded_official_draws(fixture):
    width, height = fixture["ref_resized_for_generation"]
    aligned = [PoseFrame([person_from_official(f["body"], f["hands"], f["subset"][0])], width, height)
               for f in fixture["aligned"]]
    draws = [NegativeDraw(scale=d["scale"], aspect=d["aspect"]) for d in fixture["negative_draws"]]
    negative, used = negative_poses(aligned, draws=draws)
    assert used == draws
    assert len(negative) == len(fixture["negative"]) == len(aligned)
    for frame, expected in zip(negative, fixture["negative"]):
        np.testing.assert_allclose(frame.people[0].body, expected["body"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(frame.people[0].hands, expected["hands"], rtol=0, atol=1e-12)


def test_exact_formula_neck_fixed_and_input_untouched():
    rng = np.random.default_rng(0)
    person = PersonPose.create(body=rng.random((18, 2)), hands=rng.random((2, 21, 2)), face=rng.random((68, 2)))
    before = person.copy()
    draw = NegativeDraw(scale=0.8, aspect=1.25)
    out = perturb_person(person, draw)
    neck = person.body[1]
    factor = np.array([1.25 * 0.8, 0.8])
    np.testing.assert_allclose(out.body, neck + factor * (person.body - neck), atol=1e-14)
    np.testing.assert_allclose(out.hands, neck + factor * (person.hands - neck), atol=1e-14)
    # official: the face is not scaled, only shifted by the translation that brings the scaled neck back
    np.testing.assert_allclose(out.face, person.face + neck * (1 - factor), atol=1e-14)
    assert np.array_equal(out.body[1], neck)
    for name, value in before._fields().items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(getattr(person, name), value), name


def test_hidden_neck_pivots_on_shoulder_midpoint():
    body = np.random.default_rng(1).random((18, 2))
    person = PersonPose.create(body=body, body_visible=np.arange(18) != 1)
    out = perturb_person(person, NegativeDraw(scale=1.2, aspect=0.7))
    mid = (body[2] + body[5]) / 2
    np.testing.assert_allclose((out.body[2] + out.body[5]) / 2, mid, atol=1e-14)


def test_seeded_draws_are_reproducible_and_in_range():
    draws = draw_negative_params(4000, seed=123)
    assert draws == draw_negative_params(4000, seed=123)
    assert draws != draw_negative_params(4000, seed=124)
    scales = np.array([d.scale for d in draws])
    aspects = np.array([d.aspect for d in draws])
    assert scales.min() >= 0.7 and scales.max() <= 1.3 and aspects.min() >= 0.6 and aspects.max() <= 1.4
    # uniform: mean within 4 standard errors, spread close to the uniform's (range/sqrt(12))
    for values, low, high in ((scales, 0.7, 1.3), (aspects, 0.6, 1.4)):
        standard_error = (high - low) / np.sqrt(12) / np.sqrt(len(values))
        assert abs(values.mean() - (low + high) / 2) < 4 * standard_error
        assert values.std() == pytest.approx((high - low) / np.sqrt(12), rel=0.05)
    assert abs(np.corrcoef(scales, aspects)[0, 1]) < 0.1


def test_negative_poses_per_frame_and_errors():
    rng = np.random.default_rng(2)
    frames = [PoseFrame([PersonPose.create(body=rng.random((18, 2)))], 64, 64) for _ in range(5)]
    frames.insert(2, PoseFrame([], 64, 64))
    negative, draws = negative_poses(frames, seed=7)
    assert len(negative) == 6 and len(draws) == 6 and negative[2].people == []
    assert len({d.scale for d in draws}) == 6  # independent draws per frame
    negative_again, _ = negative_poses(frames, seed=np.random.default_rng(7))
    assert all(a.people[0].same_as(b.people[0]) for a, b in zip(negative, negative_again) if a.people)
    with pytest.raises(ValueError, match="one draw per frame"):
        negative_poses(frames, draws=draws[:3])
    with pytest.raises(TypeError, match="integer seed or a numpy Generator"):
        negative_poses(frames, seed=1.5)
    with pytest.raises(ValueError, match="scale_range"):
        draw_negative_params(3, 0, scale_range=(1.3, 0.7))
