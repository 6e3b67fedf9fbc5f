"""Student-in-the-loop sampling (ODSD's adaptive sampling): the selection keeps a reservoir of candidates larger than
the training set (select.reservoir), and every few epochs the training set is drawn anew from it, class by class:
the images the teacher is surest of, then those where the student disagrees with the teacher most.

The first scoring pass over the pool stays a single pass: the reservoir is just a larger per-class top-k of it.
"""

from __future__ import annotations

import numpy as np

from ..config.schema import ResampleSpec


def disagreement(teacher_probs: np.ndarray, student_logits: np.ndarray, by: str) -> np.ndarray:
    """Per image: KL(teacher || student), or 1 where the top-1 classes differ (0 otherwise)."""
    if by == "top1":
        return (teacher_probs.argmax(1) != student_logits.argmax(1)).astype(np.float64)
    shifted = student_logits - student_logits.max(1, keepdims=True)
    log_student = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    p = np.clip(teacher_probs, 1e-12, 1.0)
    return (teacher_probs * (np.log(p) - log_student)).sum(1)


def training_subset(
    teacher_probs: np.ndarray, per_class: int, spec: ResampleSpec | None = None, scores: np.ndarray | None = None
) -> np.ndarray:
    """Sorted indices of a class-balanced training set: per teacher class at most `per_class` images, the
    `spec.confident` share of them the teacher's most confident, the rest the highest `scores` (disagreement) among
    the others. Without `scores`, all of them by confidence. Ties go to the lower index, so it is deterministic."""
    top, confidence = teacher_probs.argmax(1), teacher_probs.max(1)
    chosen = []
    for c in np.unique(top):
        members = np.flatnonzero(top == c)
        by_confidence = members[np.lexsort((members, -confidence[members]))]
        if scores is None or spec is None:
            chosen.append(by_confidence[:per_class])
            continue
        sure = by_confidence[: int(round(spec.confident * per_class))]
        rest = np.setdiff1d(members, sure)
        by_score = rest[np.lexsort((rest, -scores[rest]))]
        chosen += [sure, by_score[: per_class - len(sure)]]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
