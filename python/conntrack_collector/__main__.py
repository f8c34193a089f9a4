"""`python -m conntrack_collector`: the same as the `conntrack-event-collector` command."""

import sys

from .command import main

sys.exit(main())
