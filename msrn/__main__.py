import sys

from msrn.cli import main

sys.exit(main())
