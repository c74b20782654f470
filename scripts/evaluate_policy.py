#!/usr/bin/env python
"""SPO pipeline step: same options as `sdpo spo evaluate --help`."""

import sys

from sdpo.cli import main

if __name__ == "__main__":
    sys.exit(main(["spo", "evaluate", *sys.argv[1:]]))
