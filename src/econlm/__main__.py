import sys

from econlm.cli import main

sys.exit(main())
