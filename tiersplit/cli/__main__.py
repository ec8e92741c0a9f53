"""``python -m tiersplit.cli`` runs the ``tiersplit`` command."""

from tiersplit.cli import main

main()
