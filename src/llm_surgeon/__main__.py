"""``python -m llm_surgeon`` (and ``torchrun -m llm_surgeon``): the same command line as ``llm-surgeon``."""

import sys

from llm_surgeon.cli import main

sys.exit(main())
