"""`python -m benchmarks [--quick]`: run every benchmark and write benchmarks/RESULTS.md (see suite.py)."""

import sys

from benchmarks.suite import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
