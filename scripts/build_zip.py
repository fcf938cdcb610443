"""Zip the ``segspark`` package for ``spark-submit --py-files``: the package's sources only, reproducibly.

python scripts/build_zip.py [OUT]      (default: dist/segspark.zip; ``make dist`` calls this)

The zip holds ``segspark``'s modules and the files they read (the report's templates, the log4j2
settings) and nothing else: no tests, no caches, no third-party packages. The same
bytes come out for the same sources (fixed timestamps, sorted entries), so a cluster's cached copy can
be compared with a checksum.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "segspark"
PACKAGE_FILES = {".py", ".html", ".properties"}  # modules, the report's templates, log4j2 settings
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold: no build time in the bytes


def build_zip(out: str | Path, source_root: str | Path = REPO) -> Path:
    """Write the zip of ``<source_root>/segspark`` to ``out`` and return its path."""
    out, package = Path(out), Path(source_root) / PACKAGE
    if not (package / "__init__.py").is_file():
        raise FileNotFoundError(f"no {PACKAGE} package under {source_root}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(package.rglob("*")):
            if "__pycache__" in path.parts or path.suffix not in PACKAGE_FILES:
                continue
            entry = zipfile.ZipInfo(path.relative_to(source_root).as_posix(), date_time=FIXED_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, path.read_bytes())
    partial.replace(out)
    return out


if __name__ == "__main__":
    target = build_zip(sys.argv[1] if len(sys.argv) > 1 else REPO / "dist" / f"{PACKAGE}.zip")
    print(target)
