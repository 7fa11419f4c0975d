"""`python -m captioner ...` (what torchrun launches: `torchrun --nproc_per_node=N -m captioner train ...`)."""
import sys

from .cli import main

sys.exit(main())
