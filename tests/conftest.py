"""Shared pytest set-up: run from the project root with `python -m pytest`."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# ../shared/fixtures beside the project root (reference data from official code)
FIXTURES = os.path.join(ROOT, "..", "shared", "fixtures")
