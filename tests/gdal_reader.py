"""Read every page of TIFF files with GDAL's Python bindings, in one process.

Run with the system Python, which has python3-gdal (the venv has no GDAL bindings):

    /usr/bin/python3 tests/gdal_reader.py OUTDIR PATH...

For each PATH (index k in the argument list) it opens ``GTIFF_DIR:<n>:PATH`` for n = 1,
2, ... until GDAL finds no such directory, and writes ``OUTDIR/<k>-<n>.npy`` (rows,
columns, bands) per page, and ``OUTDIR/index.json``: per path the number of pages, the
messages GDAL emitted (errors and warnings), or the error that stopped it.
Only numpy and osgeo are imported, so that it runs outside the venv.
"""

import json
import sys
from pathlib import Path

import numpy as np
from osgeo import gdal

MAX_PAGES = 10000
MISSING_DIRECTORY = "Requested directory"


def read(path, index, out):
    messages = []

    def handler(level, number, text):
        names = {gdal.CE_Warning: "Warning", gdal.CE_Failure: "ERROR", gdal.CE_Fatal: "FATAL"}
        if level in names:
            messages.append(f"{names[level]} {number}: {text}")

    gdal.PushErrorHandler(handler)
    try:
        pages = 0
        for n in range(1, MAX_PAGES + 1):
            before = len(messages)
            dataset = gdal.Open(f"GTIFF_DIR:{n}:{path}")
            if dataset is None:
                if n > 1 and all(MISSING_DIRECTORY in m for m in messages[before:]):
                    del messages[before:]  # the normal end of the pages
                    break
                return {"error": "; ".join(messages[before:]) or "GDAL cannot open it",
                        "pages": pages, "messages": messages[:before]}
            pixels = dataset.ReadAsArray()
            if pixels is None:
                return {"error": "; ".join(messages[before:]) or f"cannot read page {n - 1}",
                        "pages": pages, "messages": messages[:before]}
            pixels = pixels[np.newaxis] if pixels.ndim == 2 else pixels
            np.save(out / f"{index}-{n}.npy", np.ascontiguousarray(np.moveaxis(pixels, 0, -1)))
            dataset = None
            pages = n
        return {"pages": pages, "messages": messages}
    finally:
        gdal.PopErrorHandler()


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    index = {path: read(path, k, out) for k, path in enumerate(sys.argv[2:])}
    (out / "index.json").write_text(json.dumps(index))


if __name__ == "__main__":
    gdal.DontUseExceptions()
    main()
