"""labelprop orchestrator: the search core, the campaign on disk, the crowd, and the CLI.

Packages, by concern (each ``__init__`` lists its modules):

- ``search``        the pure core: Algorithm 1, its parameters, calibration, baselines, simulation
- ``campaign``      a campaign on disk: campaign.toml, the store, arrays, ingest, export, rounds
- ``crowd``         crowd backends behind one protocol, the poll pass, posting, quality control, money
- ``crowd_server``  the bundled MTurk-compatible crowd server (imports nothing else of the orchestrator)
- ``actions``       what the commands do, as plain functions that take their inputs
- ``cli``           the thin Typer command line (``labelprop``)

Nothing outside ``cli`` imports the command line, and ``crowd_server`` imports nothing of the
orchestrator outside itself (both checked by ``tests/test_layout.py``).
"""
