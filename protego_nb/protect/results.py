"""What protecting a file or frame produced: per-face outcomes, a frame's result and a file's result (the CLI's
report rows)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class FaceOutcome:
    """One detected face: its box (image pixels), probability, ``status`` ``protected``/``skipped`` and why."""

    box: list[float]
    prob: float
    status: str
    reason: str = ""
    similarity: float | None = None


@dataclass
class FrameResult:
    """:meth:`Protector.protect_array`'s answer: the protected image, the faces and stage timings (seconds)."""

    image: np.ndarray
    faces: list[FaceOutcome]
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def n_protected(self) -> int:
        return sum(f.status == "protected" for f in self.faces)


@dataclass
class ProtectResult:
    """What happened to one input file.

    ``status``: ``protected`` (output written), ``skipped`` (nothing to protect; no output, ``reason`` says
    why) or ``failed`` (``reason`` and ``message`` name the problem). ``warnings``: sentences for the user
    (several faces and which were protected, a truncated video, ...). Videos also count frames.
    """

    input: str
    kind: str
    status: str
    output: str | None = None
    reason: str = ""
    message: str = ""
    faces: list[FaceOutcome] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    frames: int = 0
    frames_protected: int = 0
    frames_without_face: int = 0
    audio: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
