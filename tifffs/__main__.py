import sys

from tifffs.cli import main

sys.exit(main())
