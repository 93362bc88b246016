"""The ``labelprop`` command line: thin Typer commands that parse options, call
:mod:`orchestrator.actions` (or the core directly for one-liners) and print.

- ``app``        the Typer application and ``main`` (the console script ``labelprop``;
  ``python -m orchestrator.cli`` runs it too); it only assembles the command modules
- ``campaign``   init, ingest, cluster, export, status
- ``run``        run (the campaign loop to its end); ``estimate`` what a campaign will cost
- ``crowd``      poll, gold, report, hits, bonus; ``prolific`` the Prolific test study
- ``simulate``   simulate and demo; ``data`` synth and calibrate; ``evaluate`` detector output
- ``iterate``    the next round (retrain, detect, cluster)
- ``options``    options built from the core dataclasses' fields (defaults, help, names)
- ``display``    the live progress display and the estimate printout

Rule: nothing outside this package imports it (``tests/test_layout.py``); a command module
imports no other command module's logic, only ``options`` and ``display``.
"""
