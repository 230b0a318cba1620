"""Pose Simulation (stage 3): interpolation values, only p1 changes, statistics over seeds, errors."""
import numpy as np
import pytest

from steadydancer_core.pose.keypoints import PersonPose, PoseFrame
from steadydancer_core.pose.simulation import simulate_pose_discontinuity, simulate_variant


def clip(frames: int = 8, seed: int = 0) -> list[PoseFrame]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(frames):
        person = PersonPose.create(body=rng.random((18, 2)), body_score=rng.uniform(0.5, 1, 18),
                                   hands=rng.random((2, 21, 2)), face=rng.random((68, 2)))
        out.append(PoseFrame([person], 100, 100))
    return out


@pytest.mark.parametrize("t_star", [2, 3, 4])
def test_p1_is_the_first_interpolated_pose(t_star):
    frames = clip()
    out = simulate_variant(frames, t_star)
    p0, pt, p1 = frames[0].people[0], frames[t_star].people[0], out[1].people[0]
    np.testing.assert_allclose(p1.body, p0.body + (pt.body - p0.body) / t_star, atol=1e-15)
    np.testing.assert_allclose(p1.hands, p0.hands + (pt.hands - p0.hands) / t_star, atol=1e-15)
    np.testing.assert_allclose(p1.body_score, p0.body_score + (pt.body_score - p0.body_score) / t_star, atol=1e-15)
    for t in range(len(frames)):
        if t != 1:
            assert out[t] is frames[t]  # every other frame untouched
    assert frames[1].people[0] is not p1 and not np.allclose(frames[1].people[0].body, p1.body)


def test_missing_keypoints_keep_p1_and_all_intermediate():
    frames = clip()
    hidden = np.arange(18) < 4
    frames[0] = PoseFrame([frames[0].people[0].replace(body_visible=~hidden)], 100, 100)  # 0..3 hidden in p0
    p1_hidden = np.arange(18) == 10
    frames[1] = PoseFrame([frames[1].people[0].replace(body_visible=~p1_hidden)], 100, 100)
    out = simulate_variant(frames, 3)
    p0, p3, old, new = frames[0].people[0], frames[3].people[0], frames[1].people[0], out[1].people[0]
    np.testing.assert_array_equal(new.body[hidden], old.body[hidden])
    both = ~hidden
    np.testing.assert_allclose(new.body[both], p0.body[both] + (p3.body[both] - p0.body[both]) / 3, atol=1e-15)
    assert new.body_visible[10]  # visible in p0 and p3 → interpolated, hence visible
    assert np.array_equal(new.body_visible[hidden], old.body_visible[hidden])
    every = simulate_variant(frames, 4, replace="all_intermediate")
    p4 = frames[4].people[0]
    for k in (1, 2, 3):
        np.testing.assert_allclose(every[k].people[0].body[both],
                                   p0.body[both] + k / 4 * (p4.body[both] - p0.body[both]), atol=1e-15)


def test_statistics_over_seeds():
    frames = clip()
    runs = [simulate_pose_discontinuity(frames, seed) for seed in range(1200)]
    replaced = np.array([run.replaced for run in runs])
    t_stars = np.array([run.t_star for run in runs])
    # 50 % ± 4 standard errors (σ = sqrt(0.25 / 1200) ≈ 0.0144)
    assert abs(replaced.mean() - 0.5) < 4 * 0.0144
    assert set(t_stars.tolist()) == {2, 3, 4}
    for t in (2, 3, 4):
        assert abs((t_stars == t).mean() - 1 / 3) < 4 * np.sqrt(2 / 9 / 1200)
    for run in runs[:50]:
        if run.replaced:
            expected = simulate_variant(frames, run.t_star)
            np.testing.assert_array_equal(run.frames[1].people[0].body, expected[1].people[0].body)
        else:
            assert all(a is b for a, b in zip(run.frames, frames))
    again = simulate_pose_discontinuity(frames, 17)
    assert (again.t_star, again.replaced) == (runs[17].t_star, runs[17].replaced)


def test_short_clips_and_errors():
    short = clip(frames=3)
    assert {simulate_pose_discontinuity(short, s).t_star for s in range(40)} == {2}
    with pytest.raises(ValueError, match="too short"):
        simulate_pose_discontinuity(clip(frames=2), 0)
    with pytest.raises(ValueError, match="needs at least 5 frames"):
        simulate_variant(clip(frames=4), 4)
    with pytest.raises(ValueError, match="replace_prob"):
        simulate_pose_discontinuity(clip(), 0, replace_prob=1.5)
    with pytest.raises(ValueError, match="empty sequence"):
        simulate_pose_discontinuity([], 0)
    empty_start = [PoseFrame([], 100, 100)] + clip(frames=4)
    assert simulate_variant(empty_start, 2)[1] is empty_start[1]
