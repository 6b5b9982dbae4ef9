"""The resilience tests import the e2e stack builder from its folder.

tests/e2e/e2e_stack.py builds the router running `mgm up` (manager, igmp, Linux
forwarder); it is imported from its folder, so these tests do not depend on
the order in which pytest collects the suites.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
