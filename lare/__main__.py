"""``python -m lare``: the orchestrator behind ``./run_all.sh`` (:mod:`lare.pipeline.orchestrator`)."""

import sys

from lare.pipeline.orchestrator import main

sys.exit(main())
