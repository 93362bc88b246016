"""`labelprop report`: one self-contained HTML page about a crowd campaign.

Plots (matplotlib, embedded as PNG data URIs so the file can be mailed or archived):
accepted masks against spend; quality against spend (precision of the accepted masks
when ground-truth IoUs are known, else the gold accuracy of the answers used); cluster
decisions by kind.  Then thumbnails of accepted masks, a grid per class (a message says
so when nothing is accepted yet, or when the campaign has no images); the accepted masks
that look doubtful (:func:`orchestrator.crowd.signals.doubtful_masks`: answered "no" but
accepted with their cluster, "yes" from a low-scoring worker, or answered implausibly
fast), with thumbnails; the workers ranked by their answer-quality score (gold accuracy,
agreement with the other answers of their clusters, speed); and the campaign counters.
Everything is derived from store rows (node decision events, processed assignments,
answers), never from separate counters.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
from pathlib import Path

import numpy as np
from sqlalchemy import select

__all__ = ["write_report", "report_data", "THUMBS_PER_CLASS", "DOUBTFUL_SHOWN"]

THUMBS_PER_CLASS = 24
DOUBTFUL_SHOWN = 24
THUMB_PX = 112


def report_data(campaign_dir, db: str | None = None) -> dict:
    from orchestrator.campaign.arrays import load_forest
    from orchestrator.actions.campaign import campaign_status
    from orchestrator.crowd.crowd_store import CrowdAnswer, CrowdAssignment
    from orchestrator.campaign.store import Event, Mask, open_store, read_session

    d = Path(campaign_dir)
    st = campaign_status(d, db)
    engine = open_store(d, db)
    with read_session(engine) as s:
        forest = load_forest(s, d, verify=False) if st["trees_built"] else None
        # node events of the current round (`labelprop iterate`): earlier rounds' name other forests
        from sqlalchemy import func

        since = s.execute(select(func.max(Event.id)).where(Event.kind == "round_start")).scalar() or 0
        ev = s.execute(select(Event.ts, Event.kind, Event.payload).where(
            Event.kind.in_(["node_accepted", "node_rejected", "node_split"]), Event.id > since)
            .order_by(Event.id)).all()
        pays = s.execute(select(CrowdAssignment.processed_at, CrowdAssignment.cost_cents)
                         .where(CrowdAssignment.final_status == "Approved")
                         .order_by(CrowdAssignment.processed_at)).all()
        gold = s.execute(select(CrowdAnswer.created_at, CrowdAnswer.correct).where(
            CrowdAnswer.status == "gold").order_by(CrowdAnswer.id)).all()
        ious = dict(s.execute(select(Mask.id, Mask.iou)).all())
    engine.dispose()

    def ts(t):
        if t is None:
            return 0.0
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.timezone.utc)
        return t.timestamp()

    pay_t = np.array([ts(t) for t, _ in pays]) if pays else np.zeros(0)
    pay_c = np.cumsum([c for _, c in pays]) / 100.0 if pays else np.zeros(0)

    def spend_at(t: float) -> float:
        i = np.searchsorted(pay_t, t, side="right")
        return float(pay_c[i - 1]) if i > 0 else 0.0

    from orchestrator.campaign.config import load_config

    kiou = load_config(d).search.kiou
    timeline, n_acc, n_good, counts = [], 0, 0, {"accepted": 0, "rejected": 0, "split": 0}
    have_iou = forest is not None and all(v is not None for v in ious.values()) and ious
    for t, kind, payload in ev:
        counts[kind.split("_", 1)[1]] += 1
        if kind != "node_accepted" or forest is None:
            continue
        node = json.loads(payload)["node"]
        masks = forest.order[forest.start[node]:forest.end[node]]
        n_acc += int(masks.shape[0])
        if have_iou:
            n_good += int(sum(ious[int(m)] >= kiou for m in masks.tolist()))
        timeline.append((spend_at(ts(t)), n_acc, n_good / n_acc if have_iou and n_acc else None))
    gold_curve = []
    ok = tot = 0
    for t, c in gold:
        ok += bool(c)
        tot += 1
        gold_curve.append((spend_at(ts(t)), ok / tot))
    accepted = np.zeros(0, np.int64)
    if forest is not None:
        from orchestrator.campaign.export import ACCEPTED, masks_with_state

        engine = open_store(d, db)
        with read_session(engine) as s:
            accepted = np.flatnonzero(masks_with_state(s, forest, [ACCEPTED]))
        engine.dispose()
    return {"status": st, "timeline": timeline, "gold_curve": gold_curve, "decisions": counts,
            "have_iou": bool(have_iou), "accepted": accepted, "doubtful": _doubtful(d, db, accepted, st)}


def _doubtful(d: Path, db, accepted: np.ndarray, st: dict) -> list:
    from orchestrator.campaign.config import load_config
    from orchestrator.crowd.signals import doubtful_masks
    from orchestrator.campaign.store import Answer, open_store, read_session

    if accepted.shape[0] == 0:
        return []
    q = load_config(d).crowd.qualification
    engine = open_store(d, db)
    with read_session(engine) as s:
        rows = s.execute(select(Answer.mask_id, Answer.label, Answer.worker_id, Answer.seconds)).all()
    engine.dispose()
    scores = {w["worker_id"]: w["score"] for w in (st.get("crowd") or {}).get("workers", [])}
    return doubtful_masks([tuple(r) for r in rows], set(accepted.tolist()), scores,
                          min_seconds=q.min_seconds_per_question, low_score=0.6)


def _thumbnails(d: Path, db, mask_ids: list[int]) -> tuple[dict[int, str], dict[int, str], str | None]:
    """``({mask id: data URI}, {mask id: class name}, why none)`` -- small overlays of the masks."""
    from orchestrator.crowd.assets import OverlayItem, decode_rle, render_overlay_array
    from orchestrator.campaign.store import Category, Event, Image, Mask, open_store, read_session

    if not mask_ids:
        return {}, {}, None
    engine = open_store(d, db)
    with read_session(engine) as s:
        rows = s.execute(select(Mask.id, Mask.rle, Mask.bbox, Image.file_name, Category.name)
                         .join(Image, Image.id == Mask.image_id, isouter=True)
                         .join(Category, Category.id == Mask.category_id)
                         .where(Mask.id.in_(sorted(mask_ids)))).all()
        ev = s.execute(select(Event.payload).where(Event.kind == "ingest").order_by(Event.id.desc()).limit(1)).scalar()
    engine.dispose()
    names = {int(m): c for m, _, _, _, c in rows}
    root = json.loads(ev or "{}").get("sources", {}).get("image_root")
    if root is None or all(r[1] is None or r[3] is None for r in rows):
        return {}, names, "this campaign has no images (simulation triplets): nothing to show"
    from PIL import Image as PILImage

    out: dict[int, str] = {}
    by_image: dict[str, list] = {}
    for m, rle, bbox, fname, _ in rows:
        if rle is not None and fname is not None:
            by_image.setdefault(fname, []).append(OverlayItem(f"mask-{m}", Path(root) / fname, json.loads(rle),
                                                              json.loads(bbox) if bbox else None))
    for fname, items in by_image.items():
        try:
            with PILImage.open(Path(root) / fname) as im:
                arr = np.asarray(im.convert("RGB"))
        except OSError:
            continue
        for it in items:
            try:
                jpeg = render_overlay_array(arr, decode_rle(it.rle), it.bbox, size=THUMB_PX, context=0.4)
            except Exception:          # a mask that cannot be drawn is left out of the page, not fatal
                continue
            out[int(it.key[5:])] = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
    why = None if out else f"the images under {root} cannot be read"
    return out, names, why


def _pick(accepted: np.ndarray, classes: dict[int, str], per_class: int) -> dict[str, list[int]]:
    """Up to ``per_class`` accepted masks of each class, spread evenly over the class's masks."""
    by_class: dict[str, list[int]] = {}
    for m in accepted.tolist():
        by_class.setdefault(classes.get(m, "?"), []).append(int(m))
    out = {}
    for c in sorted(by_class):
        ms = by_class[c]
        if len(ms) > per_class:
            idx = np.linspace(0, len(ms) - 1, per_class).round().astype(int)
            ms = [ms[i] for i in sorted(set(idx.tolist()))]
        out[c] = ms
    return out


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_report(campaign_dir, out, db: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from orchestrator.atomic import atomic_write_text
    from orchestrator.crowd.estimate import work_text

    data = report_data(campaign_dir, db)
    st = data["status"]
    cr = st.get("crowd") or {}
    imgs = []
    tl = data["timeline"]
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    if tl:
        ax.step([p[0] for p in tl], [p[1] for p in tl], where="post", color="#2e7dd1")
    ax.set_xlabel("spend (USD, approved rewards + fees)")
    ax.set_ylabel("accepted masks")
    ax.set_title("Accepted masks against spend")
    ax.grid(alpha=0.3)
    imgs.append(("Accepted masks against spend", _png(fig)))
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    if data["have_iou"] and tl:
        ax.plot([p[0] for p in tl], [p[2] for p in tl], color="#2e9e4f", label="precision of accepted masks")
    if data["gold_curve"]:
        g = data["gold_curve"]
        ax.plot([p[0] for p in g], [p[1] for p in g], color="#d0453a", alpha=0.8, label="gold accuracy (all answers)")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("spend (USD)")
    ax.set_ylabel("quality")
    ax.set_title("Quality against spend")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    imgs.append(("Quality against spend", _png(fig)))
    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    dec = dict(data["decisions"])
    for k, v in st.get("nodes_by_state", {}).items():
        if k in ("AUTO_REJECTED", "AUTO_SPLIT"):
            dec[k.lower().replace("_", "-")] = v
    ax.bar(list(dec), list(dec.values()), color=["#2e9e4f", "#d0453a", "#e8a33a", "#8d979f", "#b9c3cc"][:len(dec)])
    ax.set_ylabel("clusters")
    ax.set_title("Cluster decisions")
    imgs.append(("Cluster decisions", _png(fig)))
    e = html.escape

    def row(w: dict) -> str:
        acc = "-" if w["gold_accuracy"] is None else f"{w['gold_accuracy']:.2f} ({w['gold_correct']}/{w['gold_total']})"
        ag = "-" if w["mean_agreement"] is None else f"{w['mean_agreement']:.2f}"
        sec = "-" if w["median_seconds_per_question"] is None else f"{w['median_seconds_per_question']:.2f}"
        cells = [w["rank"], e(w["worker_id"]), f"{w['score']:.2f}", w["assignments"], w["approved"], w["rejected"],
                 acc, ag, sec, w["flagged"], w["state"]]
        return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"

    rows = "".join(row(w) for w in cr.get("workers", []))
    budget = f"${cr['budget_usd']:.2f}" if cr.get("budget_usd") else "none"
    facts = [("state", st.get("state", "")),
             ("masks", f"{st['masks']:,} = {st['accepted_masks']:,} accepted + {st['rejected_masks']:,} rejected + "
                       f"{st['undecided_masks']:,} undecided"),
             ("questions answered / pending", f"{st['questions']['answered']} / {st['questions']['pending']}"),
             ("HITs posted / in flight", f"{cr.get('hits_posted', 0)} / {cr.get('hits_in_flight', 0)}"),
             ("assignments approved / rejected",
              f"{cr.get('assignments_approved', 0)} / {cr.get('assignments_rejected', 0)}"),
             ("spent", f"${cr.get('spent_usd', 0):.2f} (budget {budget})"),
             ("work", work_text(cr.get("work_hours", 0))),
             ("gold questions", cr.get("gold_questions", 0))]
    # thumbnails: a grid per class, and the doubtful masks
    accepted = data["accepted"]
    doubtful = data["doubtful"][:DOUBTFUL_SHOWN]
    from orchestrator.campaign.store import Category, Mask, open_store, read_session

    engine = open_store(Path(campaign_dir), db)
    with read_session(engine) as s:
        classes = {int(m): c for m, c in s.execute(select(Mask.id, Category.name)
                                                   .join(Category, Category.id == Mask.category_id)
                                                   .where(Mask.id.in_(accepted.tolist()))).all()} \
            if accepted.shape[0] <= 200_000 else {}
    engine.dispose()
    grid = _pick(accepted, classes, THUMBS_PER_CLASS)
    wanted = sorted({m for ms in grid.values() for m in ms} | {x.mask_id for x in doubtful})
    thumbs, _, why = _thumbnails(Path(campaign_dir), db, wanted)

    def tile(m: int, caption: str) -> str:
        src = thumbs.get(m)
        img = f'<img src="{src}" alt="mask {m}" width="{THUMB_PX}" height="{THUMB_PX}">' if src else \
            '<div class="noimg"></div>'
        return f'<figure class="thumb" data-mask="{m}">{img}<figcaption>{e(caption)}</figcaption></figure>'

    if accepted.shape[0] == 0:
        gallery = ('<p class="nodata" id="no-accepted">No masks accepted yet: thumbnails appear here once the '
                   'crowd has accepted a cluster (run <code>labelprop run</code>, or wait for answers).</p>')
    elif why:
        gallery = f'<p class="nodata" id="no-thumbnails">{e(str(accepted.shape[0]))} masks accepted; {e(why)}.</p>'
    else:
        parts = []
        for c, ms in grid.items():
            n_c = sum(1 for m in accepted.tolist() if classes.get(int(m)) == c)
            parts.append(f'<h3>{e(c)} <span class="n">({n_c:,} accepted; {len(ms)} shown)</span></h3>'
                         f'<div class="grid" data-class="{e(c)}">' + "".join(tile(m, f"#{m}") for m in ms) + "</div>")
        gallery = "".join(parts)
    if accepted.shape[0] == 0:
        doubt_html = ""
    elif not doubtful:
        doubt_html = '<p class="nodata" id="no-doubtful">No accepted mask looks doubtful.</p>'
    else:
        doubt_html = (f'<p>{len(data["doubtful"]):,} accepted masks look doubtful; the {len(doubtful)} most doubtful:</p>'
                      '<div class="grid" id="doubtful">' +
                      "".join(tile(x.mask_id, f"#{x.mask_id}: {x.reason}") for x in doubtful) + "</div>")
    page = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>labelprop report: {e(st['name'])}</title>
<style>body{{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:20px auto;color:#1d2329}}
table{{border-collapse:collapse;margin:8px 0 18px}}td,th{{border:1px solid #d5dbe1;padding:3px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}.plots{{display:flex;flex-wrap:wrap;gap:12px}}
figure{{margin:0}}figcaption{{font-weight:600}}.grid{{display:flex;flex-wrap:wrap;gap:6px;margin:4px 0 14px}}
.thumb{{width:{THUMB_PX}px}}.thumb img,.noimg{{width:{THUMB_PX}px;height:{THUMB_PX}px;border-radius:4px;background:#e4e9ee;display:block}}
.thumb figcaption{{font-weight:400;font-size:11px;line-height:1.2;color:#4a5560}}.nodata{{color:#5b6670;font-style:italic}}
h3 .n{{font-weight:400;color:#5b6670;font-size:13px}}</style></head><body>
<h1>labelprop campaign <code>{e(st['name'])}</code></h1>
<p>{e(str(st['campaign']))} &middot; backend {e(str(cr.get('backend', '')))} &middot; generated {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}</p>
<table>{''.join(f'<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>' for k, v in facts)}</table>
<div class="plots">{''.join(f'<figure><figcaption>{e(t)}</figcaption><img alt="{e(t)}" src="{src}"></figure>' for t, src in imgs)}</div>
<h2>Accepted masks</h2>
{gallery}
<h2>Accepted masks that look doubtful</h2>
{doubt_html or '<p class="nodata">Nothing accepted yet.</p>'}
<h2>Workers, best first</h2>
<p>Score: the mean of the smoothed gold accuracy and the agreement with the other answers of the same clusters,
lowered for HITs answered implausibly fast.</p>
<table><tr><th>#</th><th>worker</th><th>score</th><th>assignments</th><th>approved</th><th>rejected</th>
<th>gold accuracy</th><th>agreement</th><th>median s / question</th><th>flagged fast</th><th>state</th></tr>{rows}</table>
</body></html>"""
    out = Path(out)
    atomic_write_text(out, page)
    return out
