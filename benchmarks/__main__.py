"""``python -m benchmarks``: the same as ``equipart bench`` (see docs/benchmarks.md).

The suite itself lives in ``equipart.bench`` so that ``equipart bench`` works from a plain
``pip install equipart``; this folder keeps standalone scripts and the committed results.
"""

import sys

from equipart.bench.runner import main

sys.exit(main(sys.argv[1:]))
