"""Policies for simulated-worker tests, importable as 'crowd_server_helpers:truth_policy'."""
from __future__ import annotations

import re

# True answers keyed by the field name the HIT uses for each mask ("m<id>").
TRUTH = {f"m{i}": ("yes" if i % 3 else "no") for i in range(1, 200)}


def truth_policy(task):
    """Answer every mask field found in the HIT's question content with its true answer."""
    names = [f.name for f in task.fields] or re.findall(r'name="(m\d+)"', task.question)
    return {n: TRUTH[n] for n in names if n in TRUTH}
