"""What the commands do, as plain functions that take their inputs (as allenai/amti's
``actions/``): :mod:`.campaign` (init, cluster, status), :mod:`.gold`, :mod:`.run` (poll
passes to the end), :mod:`.simulate` (strategy comparisons and the demo), :mod:`.calibrate`
(K_pr / K_pa from held-out ground truth), :mod:`.estimate`, :mod:`.iterate`,
:mod:`.prolific`.  The Typer commands in ``orchestrator/cli/*.py`` only parse options, call these and print; nothing
here prints or imports a CLI module."""
