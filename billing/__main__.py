from __future__ import annotations

import sys

from billing.cli import main

sys.exit(main())
