"""`python -m pipeline.config --markdown`: print the flag table that docs/training.md holds (generated, not copied)."""

import sys

from pipeline.config.cli import build_parser, flag_table

if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(flag_table())
    else:
        build_parser().print_help()
