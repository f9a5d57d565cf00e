import sys

from powerplane.cli import main

sys.exit(main())
