"""``python -m granite_storage`` runs the ``granite-storage`` command: see granite_storage.cli."""

from granite_storage.cli import main

raise SystemExit(main())
