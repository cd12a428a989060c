"""``python -m lavaconv`` (also under ``torchrun --nproc-per-node N -m lavaconv ...``)."""

import sys

from lavaconv.app.cli import main

sys.exit(main())
