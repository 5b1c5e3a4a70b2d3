import os
import sys

# the reference and fixture modules sit beside the tests
sys.path.insert(0, os.path.dirname(__file__))
