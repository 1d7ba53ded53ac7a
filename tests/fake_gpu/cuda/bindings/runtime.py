"""`from cuda.bindings import runtime` in a test process: tests/fake_tensorrt.py's stand-in."""

import sys

from tests.fake_tensorrt import shared

sys.modules[__name__] = shared()[1]
