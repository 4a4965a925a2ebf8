"""Names of the downsampling methods (kept free of heavy imports: the CLI loads it)."""

BLOCK_METHODS = ("mean", "nearest", "max", "min", "median", "mode")
INTERPOLATING_METHODS = ("linear", "lanczos")
METHODS = BLOCK_METHODS + INTERPOLATING_METHODS
