"""The bundled MTurk-compatible crowd server (`labelprop crowd-server`).

MTurk closed on 2026-09-30; this package speaks the subset of the MTurk Requester
API (2017-01-17, JSON 1.1, SigV4) that labelprop uses, so the boto3 ``mturk``
client works against it unchanged through ``endpoint_url``, and it serves the
worker side in a browser.

Modules, by what they hold:

- ``api``               the Requester API operations (CreateHIT, ListAssignmentsForHIT, ...)
- ``sigv4``             SigV4 request verification
- ``validation``        request parameters checked against botocore's service model
- ``credentials``       the requester key pair and AWS-format credential/config files
- ``models``            the SQL tables (sqlmodel)
- ``store``             data directory, database engine, transactions, clock-driven transitions
- ``ids``               MTurk-style identifiers
- ``xml_formats``       Question XML parsing, QuestionFormAnswers writing, AnswerKey scoring
- ``qualification_checks`` evaluation of QualificationRequirements for a worker
- ``http_server``       the HTTP server (uvicorn + h11): limits, routing, security headers, logs, health, shutdown
- ``tls``               certificates: the operator's own, or a local CA and a certificate it signs
- ``worker_web``        the worker web pages (sign-in, HIT groups, preview/accept/submit, tests)
- ``simulated_workers`` programmatic workers driving the worker-side HTTP endpoints
- ``testing``           start a server subprocess on a free port (for tests and the campaign loop)
- ``cli``               the ``labelprop crowd-server`` command group
- ``prolific_entry``    the Prolific participants' entry routes (start, next, completion codes)
- ``errors``            ``LabelpropError``, the user-facing error (the orchestrator re-exports it)
- ``simulated_workers`` also holds the one simulated-answer policy (``true_answer``,
  ``answers_wrongly``, ``worker_answer``) that the in-process simulated crowd imports

The package imports nothing from ``orchestrator`` outside ``orchestrator/crowd_server/``
(``tests/test_layout.py`` checks it): it can be deployed and run without the rest of the
orchestrator, and the orchestrator imports from it, never the other way round.
"""
