"""Simulated annotators answering yes/no verification questions from ground truth.

A mask's correct answer is "yes" iff its IoU >= K_iou (paper Sec. 4.3/4.4).  With
``error_rate > 0`` each mask's answer is flipped with that probability.  The flips are
drawn once, up front, from ``numpy.random.default_rng(seed)`` over all mask ids, so the
answer for a mask depends only on ``(seed, mask id)``: asking in another order, in other
batches, twice, or after a crash and restart gives the same answer.
"""
from __future__ import annotations

import numpy as np

from orchestrator.errors import LabelpropError, check_unit_interval

__all__ = ["SimulatedAnnotators", "SECONDS_PER_QUESTION"]

#: a verification question's mean answer time (the paper: about 1.5 s), for hours in summaries
SECONDS_PER_QUESTION = 1.5


class SimulatedAnnotators:
    """Deterministic simulated crowd: ``answer(mask_ids)`` -> int8 array of 1 (yes) / 0 (no).

    Args:
        ious: true IoU of every mask (indexed by mask id).
        kiou: a mask is correct when IoU >= kiou.
        error_rate: probability that the answer for a mask is flipped (fixed per mask).
        seconds_per_question: mean answer time, used for hours in summaries.
        seed: seed of the flips.

    Attributes:
        truth: int8 ground-truth answers (IoU >= kiou) for every mask.
        answers: int8 answers actually given (truth with the fixed flips applied).
        questions: how many answers have been handed out so far (repeats included).
    """

    def __init__(self, ious: np.ndarray, kiou: float, error_rate: float = 0.0,
                 seconds_per_question: float = SECONDS_PER_QUESTION, seed: int = 0) -> None:
        ious = np.asarray(ious, dtype=np.float64)
        if ious.ndim != 1:
            raise LabelpropError(f"ious must be 1-D, got shape {ious.shape}")
        if not np.all(np.isfinite(ious)):
            raise LabelpropError("ious contain NaN/inf")
        self.kiou = check_unit_interval("kiou", kiou)
        self.error_rate = check_unit_interval("error_rate", error_rate)
        if not seconds_per_question > 0:
            raise LabelpropError(f"seconds_per_question must be > 0, got {seconds_per_question!r}")
        self.seconds_per_question = float(seconds_per_question)
        self.seed = int(seed)
        self.truth = (ious >= self.kiou).astype(np.int8)
        flips = np.random.default_rng(self.seed).random(ious.shape[0]) < self.error_rate
        self.flipped = flips
        self.answers = np.where(flips, 1 - self.truth, self.truth).astype(np.int8)
        self.answers.setflags(write=False)
        self.truth.setflags(write=False)
        self.questions = 0

    @property
    def n(self) -> int:
        return int(self.truth.shape[0])

    def answer(self, mask_ids) -> np.ndarray:
        """Answers (int8, 1 = yes) for ``mask_ids``, in the same order."""
        ids = np.asarray(mask_ids, dtype=np.int64).reshape(-1)
        if ids.size:
            lo, hi = (ids.min(), ids.max()) if ids.size > 32 else (min(v := ids.tolist()), max(v))
            if lo < 0 or hi >= self.answers.shape[0]:
                bad = ids[(ids < 0) | (ids >= self.n)][0]
                raise LabelpropError(f"mask id {int(bad)} is out of range (0..{self.n - 1})")
        self.questions += int(ids.size)
        return self.answers[ids].copy()

    def hours(self, questions: int) -> float:
        return float(questions) * self.seconds_per_question / 3600.0
