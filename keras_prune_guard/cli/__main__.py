"""`python -m keras_prune_guard.cli`: the console script."""

import sys

from keras_prune_guard.cli import main

sys.exit(main())
