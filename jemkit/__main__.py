"""``python -m jemkit`` (also what ``torchrun -m jemkit`` runs): see :mod:`jemkit.entry`."""

import sys

from jemkit.entry import main

sys.exit(main())
