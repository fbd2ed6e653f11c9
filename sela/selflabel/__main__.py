"""``python -m selflabel train ...`` / ``python -m selflabel eval CHECKPOINT ...``."""

from .cli import main

raise SystemExit(main())
