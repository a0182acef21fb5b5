"""``python -m usage_demo`` is ``usage-demo``."""

from __future__ import annotations

import sys

from usage_demo.run import main

sys.exit(main())
