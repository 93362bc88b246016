"""`labelprop report`: one self-contained HTML page about a crowd campaign.

Plots (matplotlib, embedded as PNG data URIs so the file can be mailed or archived):
accepted masks against spend; quality against spend (precision of the accepted masks
when ground-truth IoUs are known, else the gold accuracy of the answers used); cluster
decisions by kind.  Then the worker table (assignments, approvals, gold accuracy,
median seconds per question, flags, blocks) and the campaign counters.  Everything is
derived from store rows (node decision events, processed assignments), never from
separate counters.
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

__all__ = ["write_report", "report_data"]


def report_data(campaign_dir, db: str | None = None) -> dict:
    from orchestrator.arrays import load_forest
    from orchestrator.cli_campaign import campaign_status
    from orchestrator.crowd_store import CrowdAnswer, CrowdAssignment
    from orchestrator.store import Event, Mask, open_store, read_session

    d = Path(campaign_dir)
    st = campaign_status(d, db)
    engine = open_store(d, db)
    with read_session(engine) as s:
        forest = load_forest(s, d, verify=False) if st["trees_built"] else None
        ev = s.execute(select(Event.ts, Event.kind, Event.payload).where(
            Event.kind.in_(["node_accepted", "node_rejected", "node_split"])).order_by(Event.id)).all()
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

    from orchestrator.config import load_config

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
    return {"status": st, "timeline": timeline, "gold_curve": gold_curve, "decisions": counts,
            "have_iou": bool(have_iou)}


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
        acc = "-" if w["gold_accuracy"] is None else f"{w['gold_accuracy']:.2f}"
        sec = "-" if w["median_seconds_per_question"] is None else f"{w['median_seconds_per_question']:.2f}"
        state = "blocked" if w["blocked"] else "trusted" if w["trusted"] else "probation"
        cells = [e(w["worker_id"]), w["assignments"], w["approved"], w["rejected"],
                 f"{acc} ({w['gold_correct']}/{w['gold_total']})", sec, w["flagged"], state]
        return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"

    rows = "".join(row(w) for w in cr.get("workers", []))
    budget = f"${cr['budget_usd']:.2f}" if cr.get("budget_usd") else "none"
    facts = [("masks", st["masks"]), ("accepted masks", st["accepted_masks"]), ("rejected masks", st["rejected_masks"]),
             ("questions answered / pending", f"{st['questions']['answered']} / {st['questions']['pending']}"),
             ("HITs posted / in flight", f"{cr.get('hits_posted', 0)} / {cr.get('hits_in_flight', 0)}"),
             ("assignments approved / rejected",
              f"{cr.get('assignments_approved', 0)} / {cr.get('assignments_rejected', 0)}"),
             ("spent", f"${cr.get('spent_usd', 0):.2f} (budget {budget})"),
             ("gold questions", cr.get("gold_questions", 0))]
    page = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>labelprop report: {e(st['name'])}</title>
<style>body{{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:20px auto;color:#1d2329}}
table{{border-collapse:collapse;margin:8px 0 18px}}td,th{{border:1px solid #d5dbe1;padding:3px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}.plots{{display:flex;flex-wrap:wrap;gap:12px}}
figure{{margin:0}}figcaption{{font-weight:600}}</style></head><body>
<h1>labelprop campaign <code>{e(st['name'])}</code></h1>
<p>{e(str(st['campaign']))} &middot; generated {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}</p>
<table>{''.join(f'<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>' for k, v in facts)}</table>
<div class="plots">{''.join(f'<figure><figcaption>{e(t)}</figcaption><img alt="{e(t)}" src="{src}"></figure>' for t, src in imgs)}</div>
<h2>Workers</h2>
<table><tr><th>worker</th><th>assignments</th><th>approved</th><th>rejected</th><th>gold accuracy</th>
<th>median s / question</th><th>flagged fast</th><th>state</th></tr>{rows}</table>
</body></html>"""
    out = Path(out)
    atomic_write_text(out, page)
    return out
