"""``python -m orchestrator.cli``: the ``labelprop`` command."""
from orchestrator.cli.app import main

main()
