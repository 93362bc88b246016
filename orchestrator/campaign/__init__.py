"""A campaign on disk: its parameters, its store, its arrays and what goes in and out.

- ``config``        ``campaign.toml``: sections built from the core dataclasses, one validation
- ``store``         the SQL store (sqlmodel; SQLite or PostgreSQL): masks, nodes, questions, answers
- ``arrays``        large arrays beside the store, written atomically and journaled
- ``campaign``      :class:`~orchestrator.campaign.campaign.CampaignSearch`: the search persisted
- ``ingest``        detector output (COCO results + features) or triplets into the store
- ``export``        accepted masks out (COCO, indices)
- ``rounds``        rounds of the iterative loop in the store; ``iterate`` its pure rules
- ``clusterrun``    the per-class clustering units in-process, in processes or on Ray, memory checks
- ``cluster_check`` ``cluster --check``: the two-level tree against the exact one
- ``report``        the campaign's HTML report

Uses :mod:`orchestrator.search` (the core) and :mod:`orchestrator.crowd` (crowd tables); never
:mod:`orchestrator.cli`.
"""
