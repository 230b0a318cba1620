"""Pose data and pose-latent modulation: keypoint types, alignment to the reference, the negative pose for
DC-CFG, training-time pose simulation and the official-style rendering.

Detectors, video I/O and the pose CLI live beside these modules (``detect*``, ``video*``, ``cli``).
"""
from .align import DEFAULT_RATIO_RANGE, SCALE_NAMES, Alignment, align_sequence, apply_alignment, estimate_alignment
from .conditions import PoseConditions, build_pose_conditions
from .keypoints import (
    BODY_JOINTS, BODY_NAMES, FACE_JOINTS, HAND_JOINTS, LEFT_HAND, NECK, RIGHT_HAND, PersonPose, PoseFrame,
    check_sequence, frames_from_dict, frames_from_pose_keypoint, frames_to_dict, frames_to_pose_keypoint,
    load_pose_json, person_from_official, person_to_official, save_pose_json, select_main_people, select_person,
)
from .negative import (
    NEGATIVE_ASPECT_RANGE, NEGATIVE_SCALE_RANGE, NegativeDraw, as_generator, draw_negative_params, negative_poses,
    perturb_person,
)
from .render import OPENPOSE_COLORS, render_frame, render_frames
from .simulation import SimulationResult, interpolate_person, simulate_pose_discontinuity, simulate_variant
