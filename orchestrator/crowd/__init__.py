"""Crowd campaigns: the backend seam, money, quality control and the poll pass.

- ``backends``    one :class:`~orchestrator.crowd.backends.CrowdBackend` protocol, a registry,
  and its implementations: ``mturk`` (AWS, the sandbox, or the bundled crowd server, by
  endpoint), ``simulated`` (an in-process crowd that goes through the same poll path) and
  ``prolific`` (Prolific participants working on the bundled server);
- ``poll``        one poll pass (post, collect, review, pay, feed the search), every backend;
- ``posting``     HIT intents, packing, the budget; ``hits`` HIT contents;
- ``quality``     QC as one pure function (gold, agreement, holds, verdicts);
- ``crowd_store`` the crowd tables of the campaign store; ``prolific_store`` Prolific's;
- ``ledger``      money in integer cents: fee rules, reservations, spend, budget (pure);
- ``cost``        the cost model of simulations (reward, questions per HIT, fees);
- ``signals``     answer-quality signals (response time, gold accuracy, agreement) and the
  worker ranking built from them (pure);
- ``estimate``    expected questions, HITs, cost and hours of a campaign before posting;
- ``annotators``  simulated annotators answering from ground truth (simulations);
- ``assets``      HIT images (mask overlays) published locally or to S3;
- ``mturk``       the boto3 MTurk client with retries.

The poll pass, posting and quality control use only the protocol, never a platform's client.
"""
