"""``python -m tiersplit`` runs the ``tiersplit`` command."""

from tiersplit.cli import main

main()
