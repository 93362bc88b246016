"""Crowd campaigns: the backend seam, money, and the pieces the poll pass is built from.

- ``backends``  one :class:`~orchestrator.crowd.backends.CrowdBackend` protocol, a registry,
  and its implementations: ``mturk`` (AWS, the sandbox, or the bundled crowd server, by
  endpoint) and ``simulated`` (an in-process crowd that goes through the same poll path);
- ``ledger``    money in integer cents: fee rules, reservations, spend, budget (pure);
- ``signals``   answer-quality signals (response time, gold accuracy, agreement) and the
  worker ranking built from them (pure);
- ``estimate``  expected questions, HITs, cost and hours of a campaign before posting.

The poll pass itself (:mod:`orchestrator.poll`), posting (:mod:`orchestrator.posting`) and
quality control (:mod:`orchestrator.quality`) use only the protocol, never a platform's client.
"""
