"""``python -m sgwsss`` runs the command line (see :mod:`sgwsss.cli`)."""
from sgwsss.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
