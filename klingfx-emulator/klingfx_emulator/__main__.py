"""``python -m klingfx_emulator [options]``: the ``klingfx-emulator`` command (see :mod:`.cli`)."""

import sys

from klingfx_emulator.cli import main

if __name__ == "__main__":
    sys.exit(main())
