"""``python -m easi3r`` (also what ``torchrun -m easi3r`` starts)."""

import sys

from easi3r.cli import main

sys.exit(main())
