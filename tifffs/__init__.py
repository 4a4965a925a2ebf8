"""tifffs: a read-only FUSE filesystem of downsampled TIFF views, rendered on read.

Without a mount: ``tifffs.open_view(path, factor, method)`` returns an object with the
exact ``size`` of the view and ``read(offset, length)``.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "open_view"]


def __getattr__(name: str) -> Any:
    # imported lazily: the command line forks before numpy and tifffile are loaded
    if name == "open_view":
        from tifffs.virtual import open_view

        return open_view
    raise AttributeError(name)
