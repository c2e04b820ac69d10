"""``python -m jemkit`` (also what ``torchrun -m jemkit`` runs)."""

import sys

from jemkit.cli import main

sys.exit(main())
