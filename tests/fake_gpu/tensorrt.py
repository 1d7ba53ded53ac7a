"""`import tensorrt` in a test process: tests/fake_tensorrt.py's stand-in (see README.md here)."""

import sys

from tests.fake_tensorrt import shared

sys.modules[__name__] = shared()[0]
