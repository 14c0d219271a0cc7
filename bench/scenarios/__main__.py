"""python -m bench.scenarios"""

import sys

from bench.scenarios.runner import main

sys.exit(main())
