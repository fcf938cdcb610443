"""spark-submit entry point: does what ``segspark run`` does.

spark-submit [spark options] jobs/segment_customers.py --config FILE [--set key=value ...]
"""

import sys

try:
    from segspark.cli import main
except ImportError:  # run from a source checkout without installing: use the package beside jobs/
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from segspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
