"""``python -m bench``: run every scenario, print the table, write ``bench/results.json``."""

import sys

from bench.run import main

sys.exit(main())
