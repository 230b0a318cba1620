"""Keypoints as data: one person's OpenPose-18 body, two hands and a face, and the frames that hold them.

Conventions (every function of ``steadydancer_core.pose`` relies on them):

* Coordinates are **normalised**: ``x / W`` and ``y / H`` of the image the keypoints were detected on
  (``PoseFrame.width`` / ``PoseFrame.height`` in pixels). Arrays are float64 (the official pipeline
  computes in float64 and the parity fixture is float64).
* Every point carries a ``score`` (detector confidence, 0..1) and a boolean ``visible`` flag. Visibility is
  explicit: coordinates of an invisible point are meaningless (kept as they are, never drawn, never used
  by the alignment). Detectors decide visibility from their threshold (0.35 official, 0.3 controlnet_aux).
* Body order is OpenPose-18 (``BODY_NAMES``): 0 nose, 1 neck, 2 RSho, 3 RElb, 4 RWri, 5 LSho, 6 LElb,
  7 LWri, 8 RHip, 9 RKnee, 10 RAnk, 11 LHip, 12 LKnee, 13 LAnk, 14 REye, 15 LEye, 16 REar, 17 LEar.
* ``hands[0]`` is the person's **left** hand, ``hands[1]`` the **right** hand (``LEFT_HAND``/``RIGHT_HAND``),
  21 points each in OpenPose hand order. Each person keeps its own two hands (the official code mixes
  the hands of different people when several are detected; we do not).
* ``face`` holds the 68 points of the 300-W layout (DWPose's face); they are carried but never drawn.

Types:

* ``PersonPose`` - one person; build it with ``PersonPose.create(...)`` (missing parts default to
  "not visible"), numpy arrays validated on construction (wrong shapes raise ``ValueError``).
* ``PoseFrame(people, width, height)`` - the people of one image; ``people`` may be empty.
* A sequence is a plain ``list[PoseFrame]``.

Interop:

* ``frames_to_pose_keypoint`` / ``frames_from_pose_keypoint``: comfyui_controlnet_aux's ``POSE_KEYPOINT``
  (a list with one dict per frame: ``{"people": [{"pose_keypoints_2d": [x, y, c] * 18,
  "hand_left_keypoints_2d": [x, y, c] * 21 or None, "hand_right_keypoints_2d": ..., "face_keypoints_2d":
  [x, y, c] * 70 or None}], "canvas_width": W, "canvas_height": H}``). controlnet_aux's DWPose writes
  **pixel** coordinates, a missing point as ``[0, 0, 0]``, a wholly missing part as ``None`` and 70 face
  points (the 68 + both eyes); its OpenPose detector writes normalised coordinates. Reading detects the
  unit the way controlnet_aux's renderer does (all coordinates within [0, 1] → normalised).
* ``person_to_official`` / ``person_from_official``: the official SteadyDancer detector arrays
  (``candidate [18,2]`` with -1 for a hidden joint, ``hands [2,21,2]`` with -1 for hidden points).
* ``save_pose_json`` / ``load_pose_json``: this package's own JSON (lossless, including invisible
  coordinates, detection boxes and scores); ``load_pose_json`` also reads a ``POSE_KEYPOINT`` file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

BODY_JOINTS = 18
HAND_JOINTS = 21
FACE_JOINTS = 68
LEFT_HAND = 0
RIGHT_HAND = 1
NECK = 1

BODY_NAMES: tuple[str, ...] = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)

POSE_JSON_FORMAT = "steadydancer-pose"
POSE_JSON_VERSION = 1

# controlnet_aux appends the two eyes (body 14, 15) to DWPose's 68 face points to reach OpenPose's 70.
_CNA_FACE_POINTS = 70


def _as_array(value: Any, shape: tuple[int, ...], dtype: type, name: str) -> np.ndarray:
    array = np.array(value, dtype=dtype, copy=True)
    if array.shape != shape:
        raise ValueError(f"PersonPose.{name}: expected shape {shape}, got {array.shape}")
    if dtype is np.float64 and not np.all(np.isfinite(array)):
        raise ValueError(f"PersonPose.{name}: expected finite values, got NaN or inf")
    return array


@dataclass(eq=False)
class PersonPose:
    """One person's keypoints in normalised image coordinates (see the module docstring).

    ``bbox`` is the detection box ``[x0, y0, x1, y1]`` (normalised) and ``detection_score`` the detector's
    score, both optional. Arrays are copied and validated on construction; the pose functions of this
    package never mutate a ``PersonPose`` they are given.
    """

    body: np.ndarray
    body_score: np.ndarray
    body_visible: np.ndarray
    hands: np.ndarray
    hand_score: np.ndarray
    hand_visible: np.ndarray
    face: np.ndarray
    face_score: np.ndarray
    face_visible: np.ndarray
    bbox: np.ndarray | None = None
    detection_score: float | None = None

    def __post_init__(self) -> None:
        self.body = _as_array(self.body, (BODY_JOINTS, 2), np.float64, "body")
        self.body_score = _as_array(self.body_score, (BODY_JOINTS,), np.float64, "body_score")
        self.body_visible = _as_array(self.body_visible, (BODY_JOINTS,), bool, "body_visible")
        self.hands = _as_array(self.hands, (2, HAND_JOINTS, 2), np.float64, "hands")
        self.hand_score = _as_array(self.hand_score, (2, HAND_JOINTS), np.float64, "hand_score")
        self.hand_visible = _as_array(self.hand_visible, (2, HAND_JOINTS), bool, "hand_visible")
        self.face = _as_array(self.face, (FACE_JOINTS, 2), np.float64, "face")
        self.face_score = _as_array(self.face_score, (FACE_JOINTS,), np.float64, "face_score")
        self.face_visible = _as_array(self.face_visible, (FACE_JOINTS,), bool, "face_visible")
        if self.bbox is not None:
            self.bbox = _as_array(self.bbox, (4,), np.float64, "bbox")
        if self.detection_score is not None:
            self.detection_score = float(self.detection_score)

    @classmethod
    def create(
        cls,
        body: Any | None = None,
        body_visible: Any | None = None,
        body_score: Any | None = None,
        hands: Any | None = None,
        hand_visible: Any | None = None,
        hand_score: Any | None = None,
        face: Any | None = None,
        face_visible: Any | None = None,
        face_score: Any | None = None,
        bbox: Any | None = None,
        detection_score: float | None = None,
    ) -> "PersonPose":
        """Build a person from whatever parts are known.

        A part left out is all-invisible (coordinates 0). Given coordinates without ``*_visible`` are all
        visible; a missing ``*_score`` is 1 where visible and 0 elsewhere.
        """
        parts = {}
        for name, coords, visible, score, shape in (
            ("body", body, body_visible, body_score, (BODY_JOINTS,)),
            ("hand", hands, hand_visible, hand_score, (2, HAND_JOINTS)),
            ("face", face, face_visible, face_score, (FACE_JOINTS,)),
        ):
            if coords is None:
                coords = np.zeros(shape + (2,))
                visible = np.zeros(shape, bool) if visible is None else visible
            elif visible is None:
                visible = np.ones(shape, bool)
            visible = _as_array(visible, shape, bool, f"{name}_visible")
            if score is None:
                score = visible.astype(np.float64)
            parts[name] = (coords, visible, score)
        return cls(
            body=parts["body"][0], body_visible=parts["body"][1], body_score=parts["body"][2],
            hands=parts["hand"][0], hand_visible=parts["hand"][1], hand_score=parts["hand"][2],
            face=parts["face"][0], face_visible=parts["face"][1], face_score=parts["face"][2],
            bbox=bbox, detection_score=detection_score,
        )

    def copy(self) -> "PersonPose":
        """A deep copy (the constructor copies every array)."""
        return PersonPose(**self._fields())

    def replace(self, **changes: Any) -> "PersonPose":
        """A copy with some fields replaced (validated like a new person)."""
        fields = self._fields()
        unknown = set(changes) - set(fields)
        if unknown:
            raise ValueError(f"PersonPose.replace: unknown fields {sorted(unknown)}; expected some of {list(fields)}")
        fields.update(changes)
        return PersonPose(**fields)

    def _fields(self) -> dict[str, Any]:
        return {
            "body": self.body, "body_score": self.body_score, "body_visible": self.body_visible,
            "hands": self.hands, "hand_score": self.hand_score, "hand_visible": self.hand_visible,
            "face": self.face, "face_score": self.face_score, "face_visible": self.face_visible,
            "bbox": self.bbox, "detection_score": self.detection_score,
        }

    def same_as(self, other: "PersonPose", atol: float = 0.0) -> bool:
        """Equal visibility, and equal coordinates and scores where visible (invisible coordinates are
        meaningless), within ``atol``."""
        for coords, score, visible, o_coords, o_score, o_visible in (
            (self.body, self.body_score, self.body_visible, other.body, other.body_score, other.body_visible),
            (self.hands, self.hand_score, self.hand_visible, other.hands, other.hand_score, other.hand_visible),
            (self.face, self.face_score, self.face_visible, other.face, other.face_score, other.face_visible),
        ):
            if not np.array_equal(visible, o_visible):
                return False
            if not np.allclose(coords[visible], o_coords[visible], rtol=0.0, atol=atol):
                return False
            if not np.allclose(score[visible], o_score[visible], rtol=0.0, atol=atol):
                return False
        return True

    @property
    def score(self) -> float:
        """Ranking score: the detector's score if known, else the mean score of the visible body joints."""
        if self.detection_score is not None:
            return self.detection_score
        if not self.body_visible.any():
            return 0.0
        return float(self.body_score[self.body_visible].mean())

    def box(self) -> np.ndarray | None:
        """``[x0, y0, x1, y1]`` normalised: the detection box, else the extent of the visible body joints
        (None when neither exists)."""
        if self.bbox is not None:
            return self.bbox.copy()
        if not self.body_visible.any():
            return None
        points = self.body[self.body_visible]
        return np.concatenate([points.min(axis=0), points.max(axis=0)])


@dataclass(eq=False)
class PoseFrame:
    """The people detected in one image of ``width`` × ``height`` pixels (``people`` may be empty)."""

    people: list[PersonPose] = field(default_factory=list)
    width: int = 0
    height: int = 0

    def __post_init__(self) -> None:
        self.people = list(self.people)
        for i, person in enumerate(self.people):
            if not isinstance(person, PersonPose):
                raise TypeError(f"PoseFrame.people[{i}]: expected a PersonPose, got {type(person).__name__}")
        if int(self.width) != self.width or int(self.height) != self.height or self.width <= 0 or self.height <= 0:
            raise ValueError(f"PoseFrame: expected positive integer width and height in pixels, "
                             f"got {self.width}×{self.height}")
        self.width, self.height = int(self.width), int(self.height)

    @property
    def aspect(self) -> float:
        """Width / height: the factor that turns normalised x into units of image height."""
        return self.width / self.height


def check_sequence(frames: Sequence[PoseFrame], name: str = "pose sequence") -> list[PoseFrame]:
    """Return ``frames`` as a list, or raise a clear error if it is empty or holds something else."""
    frames = list(frames)
    if not frames:
        raise ValueError(f"{name}: expected at least one PoseFrame, got an empty sequence")
    for i, frame in enumerate(frames):
        if not isinstance(frame, PoseFrame):
            raise TypeError(f"{name}[{i}]: expected a PoseFrame, got {type(frame).__name__}")
    return frames


# ------------------------------------------------------------------------------------------------
# Person selection


def select_person(frame: PoseFrame, by: Literal["score", "area"] = "score") -> PersonPose | None:
    """The main person of a frame: the highest ``PersonPose.score`` (official: first = best detection), or
    the largest box in pixels (``by="area"``). None when the frame has nobody."""
    if by not in ("score", "area"):
        raise ValueError(f"select_person: expected by='score' or 'area', got {by!r}")
    if not frame.people:
        return None
    if by == "score":
        # max() keeps the first of equal scores, i.e. the detector's order, like the official person 0.
        return max(frame.people, key=lambda person: person.score)

    def area(person: PersonPose) -> float:
        box = person.box()
        if box is None:
            return -1.0
        return float((box[2] - box[0]) * frame.width * (box[3] - box[1]) * frame.height)

    return max(frame.people, key=area)


def select_main_people(frames: Sequence[PoseFrame], by: Literal["score", "area"] = "score") -> list[PoseFrame]:
    """Every frame reduced to its main person (frames without anybody stay empty)."""
    selected = []
    for frame in check_sequence(frames):
        person = select_person(frame, by)
        selected.append(PoseFrame([] if person is None else [person], frame.width, frame.height))
    return selected


# ------------------------------------------------------------------------------------------------
# Official detector arrays (-1 sentinels)


def person_from_official(body: Any, hands: Any, subset: Any | None = None) -> PersonPose:
    """A person from the official arrays: ``body [18,2]`` (candidate), ``hands [2,21,2]`` (left, right),
    optional ``subset [18]`` (-1 = hidden joint). Without ``subset`` a joint is hidden when its
    coordinates are -1, which is how the official detector marks it; hand points the same way."""
    body = _as_array(body, (BODY_JOINTS, 2), np.float64, "body")
    hands = _as_array(hands, (2, HAND_JOINTS, 2), np.float64, "hands")
    if subset is None:
        body_visible = ~np.all(body == -1, axis=-1)
    else:
        body_visible = _as_array(subset, (BODY_JOINTS,), np.float64, "subset") != -1
    hand_visible = ~np.all(hands == -1, axis=-1)
    return PersonPose.create(body=body, body_visible=body_visible, hands=hands, hand_visible=hand_visible)


def person_to_official(person: PersonPose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(body [18,2], subset [18], hands [2,21,2])`` with the official -1 sentinel for hidden points."""
    body = np.where(person.body_visible[:, None], person.body, -1.0)
    subset = np.where(person.body_visible, np.arange(BODY_JOINTS, dtype=np.float64), -1.0)
    hands = np.where(person.hand_visible[..., None], person.hands, -1.0)
    return body, subset, hands


# ------------------------------------------------------------------------------------------------
# comfyui_controlnet_aux POSE_KEYPOINT


def _triplets_out(coords: np.ndarray, score: np.ndarray, visible: np.ndarray, scale: np.ndarray,
                  confidence: str) -> list[float] | None:
    if not visible.any():
        return None
    values: list[float] = []
    for (x, y), s, v in zip(coords * scale, score, visible):
        if v:
            # A confidence of 0 means "missing" in the OpenPose format, so a visible point keeps a tiny one.
            c = 1.0 if confidence == "binary" else max(float(s), np.finfo(np.float64).tiny)
            values.extend((float(x), float(y), c))
        else:
            values.extend((0.0, 0.0, 0.0))
    return values


def frames_to_pose_keypoint(
    frames: Sequence[PoseFrame],
    units: Literal["pixels", "normalized"] = "pixels",
    confidence: Literal["score", "binary"] = "score",
) -> list[dict[str, Any]]:
    """Frames as comfyui_controlnet_aux ``POSE_KEYPOINT``.

    ``units="pixels"`` matches controlnet_aux's DWPose output. ``confidence="score"`` writes each visible
    point's score (lossless); ``"binary"`` writes 1.0 like controlnet_aux, whose own JSON decoder drops
    every point with a confidence below 1. Faces are written as 68 points.
    """
    if units not in ("pixels", "normalized"):
        raise ValueError(f"frames_to_pose_keypoint: expected units 'pixels' or 'normalized', got {units!r}")
    if confidence not in ("score", "binary"):
        raise ValueError(f"frames_to_pose_keypoint: expected confidence 'score' or 'binary', got {confidence!r}")
    out = []
    for frame in check_sequence(frames):
        scale = np.array([frame.width, frame.height], np.float64) if units == "pixels" else np.ones(2)
        people = []
        for person in frame.people:
            body = _triplets_out(person.body, person.body_score, person.body_visible, scale, confidence)
            people.append({
                # controlnet_aux always writes 18 body triplets, even for an undetected body.
                "pose_keypoints_2d": body if body is not None else [0.0] * (3 * BODY_JOINTS),
                "face_keypoints_2d": _triplets_out(person.face, person.face_score, person.face_visible, scale, confidence),
                "hand_left_keypoints_2d": _triplets_out(person.hands[LEFT_HAND], person.hand_score[LEFT_HAND],
                                                        person.hand_visible[LEFT_HAND], scale, confidence),
                "hand_right_keypoints_2d": _triplets_out(person.hands[RIGHT_HAND], person.hand_score[RIGHT_HAND],
                                                         person.hand_visible[RIGHT_HAND], scale, confidence),
            })
        out.append({"people": people, "canvas_height": frame.height, "canvas_width": frame.width})
    return out


def _triplets_in(values: Any, points: int, where: str, accept: tuple[int, ...]) -> np.ndarray | None:
    """``values`` as an ``[n, 3]`` array (None for a missing part)."""
    if values is None or (isinstance(values, (list, tuple)) and len(values) == 0):
        return None
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size % 3 or array.size // 3 not in accept:
        raise ValueError(f"{where}: expected {points} [x, y, confidence] triplets "
                         f"({3 * points} numbers), got {array.size} numbers")
    return array.reshape(-1, 3)[:points]


def frames_from_pose_keypoint(
    pose_keypoint: Sequence[dict[str, Any]] | dict[str, Any],
    units: Literal["auto", "pixels", "normalized"] = "auto",
) -> list[PoseFrame]:
    """Frames from comfyui_controlnet_aux ``POSE_KEYPOINT`` (a list of frame dicts, or one frame dict).

    A point is visible when its confidence is > 0. ``units="auto"`` treats a frame as normalised when
    every coordinate of a visible point lies within [0, 1] (controlnet_aux's own rule), else as pixels.
    """
    if units not in ("auto", "pixels", "normalized"):
        raise ValueError(f"frames_from_pose_keypoint: expected units 'auto', 'pixels' or 'normalized', got {units!r}")
    if isinstance(pose_keypoint, dict):
        pose_keypoint = [pose_keypoint]
    frames = []
    for t, frame_dict in enumerate(pose_keypoint):
        where = f"POSE_KEYPOINT[{t}]"
        if not isinstance(frame_dict, dict) or "canvas_width" not in frame_dict or "canvas_height" not in frame_dict:
            raise ValueError(f"{where}: expected a dict with 'people', 'canvas_width' and 'canvas_height'")
        width, height = frame_dict["canvas_width"], frame_dict["canvas_height"]
        raw_people = []
        for p, person in enumerate(frame_dict.get("people") or []):
            raw_people.append((
                _triplets_in(person.get("pose_keypoints_2d"), BODY_JOINTS, f"{where}.people[{p}].pose_keypoints_2d",
                             (BODY_JOINTS,)),
                _triplets_in(person.get("hand_left_keypoints_2d"), HAND_JOINTS,
                             f"{where}.people[{p}].hand_left_keypoints_2d", (HAND_JOINTS,)),
                _triplets_in(person.get("hand_right_keypoints_2d"), HAND_JOINTS,
                             f"{where}.people[{p}].hand_right_keypoints_2d", (HAND_JOINTS,)),
                _triplets_in(person.get("face_keypoints_2d"), FACE_JOINTS, f"{where}.people[{p}].face_keypoints_2d",
                             (FACE_JOINTS, _CNA_FACE_POINTS)),
            ))
        visible_xy = [part[part[:, 2] > 0, :2] for parts in raw_people for part in parts if part is not None]
        visible_xy = np.concatenate(visible_xy) if visible_xy else np.zeros((0, 2))
        normalized = units == "normalized" or (units == "auto" and bool(np.all(np.abs(visible_xy) <= 1.0)))
        scale = np.ones(2) if normalized else np.array([width, height], np.float64)
        people = []
        for body, left, right, face in raw_people:
            def split(part: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                if part is None:
                    return np.zeros((n, 2)), np.zeros(n), np.zeros(n, bool)
                visible = part[:, 2] > 0
                return np.where(visible[:, None], part[:, :2] / scale, 0.0), np.where(visible, part[:, 2], 0.0), visible

            b, bs, bv = split(body, BODY_JOINTS)
            l, ls, lv = split(left, HAND_JOINTS)
            r, rs, rv = split(right, HAND_JOINTS)
            f, fs, fv = split(face, FACE_JOINTS)
            people.append(PersonPose(body=b, body_score=bs, body_visible=bv,
                                     hands=np.stack([l, r]), hand_score=np.stack([ls, rs]), hand_visible=np.stack([lv, rv]),
                                     face=f, face_score=fs, face_visible=fv))
        frames.append(PoseFrame(people, width, height))
    return frames


# ------------------------------------------------------------------------------------------------
# Own JSON format


def _person_to_dict(person: PersonPose) -> dict[str, Any]:
    data = {name: (value.tolist() if isinstance(value, np.ndarray) else value)
            for name, value in person._fields().items()}
    return data


def frames_to_dict(frames: Sequence[PoseFrame]) -> dict[str, Any]:
    """Frames as a JSON-ready dict (lossless: every array, box and score)."""
    return {
        "format": POSE_JSON_FORMAT,
        "version": POSE_JSON_VERSION,
        "frames": [{"width": frame.width, "height": frame.height,
                    "people": [_person_to_dict(person) for person in frame.people]}
                   for frame in check_sequence(frames)],
    }


def frames_from_dict(data: dict[str, Any] | list[Any]) -> list[PoseFrame]:
    """Frames from ``frames_to_dict`` output, or from a ``POSE_KEYPOINT`` list/dict."""
    if isinstance(data, list) or (isinstance(data, dict) and "people" in data):
        return frames_from_pose_keypoint(data)
    if not isinstance(data, dict) or data.get("format") != POSE_JSON_FORMAT:
        raise ValueError(f"pose JSON: expected format {POSE_JSON_FORMAT!r} or a POSE_KEYPOINT list, "
                         f"got {type(data).__name__} with format {data.get('format') if isinstance(data, dict) else None!r}")
    if data.get("version") != POSE_JSON_VERSION:
        raise ValueError(f"pose JSON: expected version {POSE_JSON_VERSION}, got {data.get('version')!r}")
    return [PoseFrame([PersonPose(**person) for person in frame["people"]], frame["width"], frame["height"])
            for frame in data["frames"]]


def save_pose_json(frames: Sequence[PoseFrame], path: str | Path) -> None:
    """Write frames to ``path`` in this package's JSON format."""
    Path(path).write_text(json.dumps(frames_to_dict(frames)))


def load_pose_json(path: str | Path) -> list[PoseFrame]:
    """Read frames written by ``save_pose_json`` or a controlnet_aux ``POSE_KEYPOINT`` JSON file."""
    return frames_from_dict(json.loads(Path(path).read_text()))


# ``poses`` command output (keypoints.json): the reference, driving, aligned and negative keypoints
CONDITIONS_FORMAT = "steadydancer-pose-conditions"
CONDITIONS_PARTS = ("reference", "driving", "aligned", "negative")


def read_pose_file(path: str | Path, part: str) -> tuple[list[PoseFrame], str | None]:
    """Frames of a pose JSON file and which part of it they are: a ``poses`` keypoints.json gives its
    ``part`` (one of :data:`CONDITIONS_PARTS`) and returns that name; our plain format and controlnet_aux
    ``POSE_KEYPOINT`` give their frames and None."""
    if part not in CONDITIONS_PARTS:
        raise ValueError(f"part must be one of {CONDITIONS_PARTS}, got {part!r}")
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and data.get("format") == CONDITIONS_FORMAT:
        if part not in data:
            raise ValueError(f"{CONDITIONS_FORMAT} file without its {part!r} keypoints")
        return frames_from_dict(data[part]), part
    return frames_from_dict(data), None
