"""Running a campaign: poll passes until it is finished, the budget spent, or it stalls.

One loop for every backend: each step is :func:`orchestrator.crowd.poll.poll_once`, exactly what
``labelprop poll`` does from cron (post HITs, fetch answers, quality control, pay, decide
clusters).  With the ``simulated`` backend the crowd answers at once, so passes follow each
other without waiting; with a real platform ``interval`` seconds pass between them.

A platform that cannot be reached (the crowd server restarting, a network blip) is waited
out with exponential backoff (1 s doubling to 60 s) for at most
``crowd.platform_wait_seconds``.  Every pass is crash-safe, so retrying one is always
correct.  The display belongs to the caller (``show``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from orchestrator.errors import LabelpropError

__all__ = ["mask_ious", "run_passes", "run_simulated"]


def mask_ious(engine, n_masks: int, where: str) -> np.ndarray:
    """Ground-truth IoU of every mask (from the Mask table); error if any is unknown."""
    from sqlalchemy import select

    from orchestrator.campaign.store import Mask, read_session

    with read_session(engine) as s:
        rows = s.execute(select(Mask.id, Mask.iou)).all()
    ious = np.full(n_masks, np.nan)
    for i, v in rows:
        if v is not None and i < n_masks:
            ious[i] = v
    if np.isnan(ious).any():
        raise LabelpropError(f"{where}: the simulated crowd needs ground-truth IoUs, but "
                             f"{int(np.isnan(ious).sum())} masks have none (ingest triplets with `ious`)")
    return ious


def run_passes(campaign_dir: Path, *, db=None, endpoint_url=None, sandbox=None, profile=None, client=None,
               error_rate: float | None = None, overrides: dict | None = None, interval: float | None = None,
               max_passes: Optional[int] = None, platform_wait: float | None = None, show=None,
               sleep=time.sleep) -> dict:
    """Repeat poll passes until finished, stopped (budget, stall), or ``max_passes``.

    ``show(out, passes, waiting)``, if given, is called after each pass (``waiting``: a
    message while the platform cannot be reached)."""
    from orchestrator.campaign.config import load_config
    from orchestrator.crowd.backends import BackendOptions
    from orchestrator.crowd.backends.base import PlatformUnavailable
    from orchestrator.crowd.poll import poll_once

    cfg = load_config(campaign_dir)
    simulated = cfg.crowd.backend == "simulated"
    if interval is None:
        interval = 0.0 if simulated else 10.0
    wait_limit = cfg.crowd.platform_wait_seconds if platform_wait is None else platform_wait
    opts = BackendOptions(endpoint_url=endpoint_url, sandbox=sandbox, profile=profile, client=client,
                          error_rate=error_rate, extra={"crowd": overrides or {}})
    passes, steps, out, same = 0, 0, {}, 0
    last = None
    waited, backoff, waits = 0.0, 1.0, 0
    show = show or (lambda out, passes, waiting=None: None)
    while max_passes is None or passes < max_passes:
        try:
            out = poll_once(campaign_dir, db=db, options=opts)
        except PlatformUnavailable as exc:
            waits += 1
            if waited >= wait_limit:
                raise LabelpropError(f"{exc} -- gave up after waiting {waited:.0f} s "
                                     f"(crowd.platform_wait_seconds = {wait_limit}); rerun `labelprop run "
                                     f"{campaign_dir}` once the platform is back (nothing is lost)") from None
            pause = min(backoff, max(0.0, wait_limit - waited), 60.0)
            show(out or None, passes, f"waiting for the platform (try {waits}, next in {pause:.0f} s, "
                                          f"{waited:.0f} of {wait_limit} s waited): {exc}")
            sleep(pause)
            waited += pause
            backoff = min(backoff * 2, 60.0)
            continue
        waited, backoff = 0.0, 1.0
        passes += 1
        if out["locked"]:
            if max_passes is not None and passes >= max_passes:
                break
            sleep(max(interval, 1.0))
            continue
        p = out["pass"]
        did = any(p.get(k, 0) for k in ("hits_created", "hits_processed", "assignments_fetched",
                                        "hits_reposted", "hits_disposed", "assignments_settled"))
        steps += bool(did)
        show(out, passes)
        if out["stopped"]:
            break
        state = (out["questions"], out["hits_posted"], out["assignments"], out["pending_questions"],
                 out["hits_in_flight"], out.get("answers_held"))
        same = same + 1 if (state == last and not did) else 0
        last = state
        if simulated and same >= 3:
            out["stalled"] = out.get("stalled") or "no progress in three passes"
            break
        if max_passes is not None and passes >= max_passes:
            break
        if interval:
            sleep(interval)
    out["passes"] = passes
    out["steps"] = steps
    out["platform_waits"] = waits
    return out


def run_simulated(campaign_dir: Path, db: Optional[str] = None, error_rate: float = 0.0,
                  questions_per_step: Optional[int] = None, max_steps: Optional[int] = None,
                  show=None) -> dict:
    """A campaign with simulated annotators, through the poll path; adds the quality of the
    accepted masks (ground truth is known) to the summary."""
    from orchestrator.campaign.campaign import CampaignSearch
    from orchestrator.campaign.config import load_config

    if load_config(campaign_dir).crowd.backend != "simulated":
        raise LabelpropError(f"{Path(campaign_dir) / 'campaign.toml'}: [crowd] backend is not 'simulated'")
    overrides = {"questions_per_hit": int(questions_per_step)} if questions_per_step else None
    out = run_passes(Path(campaign_dir), db=db, error_rate=error_rate, overrides=overrides, max_passes=max_steps,
                     show=show)
    cs = CampaignSearch(campaign_dir, db)
    ious = mask_ious(cs.engine, cs.forest.n_masks, str(campaign_dir))
    acc = cs.search.accepted_mask()
    out.update({"mean_iou_accepted": float(ious[acc].mean()) if acc.any() else None,
                "precision_accepted": float((ious[acc] >= cs.params.kiou).mean()) if acc.any() else None})
    cs.engine.dispose()
    return out
