"""The paper's defaults (Papadopoulos et al., ICCV 2021, Sec. 5.2), written once.

:class:`~orchestrator.search.search.SearchParams` carries them with their help text; the pure
functions that take the same thresholds as arguments (calibration, baselines) default to
these names, never to literal numbers.
"""
from __future__ import annotations

__all__ = ["NS", "KA", "KIOU", "KPA", "KPR"]

NS = 15         # N_s: questions per cluster
KA = 0.85       # K_a: accept at Q >= K_a, reject at Q <= 1 - K_a
KIOU = 0.75     # K_iou: a mask is correct when its IoU >= K_iou
KPA = 0.7       # K_pa: auto-split clusters with score S <= K_pa
KPR = 0.0       # K_pr: auto-reject clusters with S <= K_pr (0: off, as in the paper)
