"""`python -m tasks.judge RUN_DIR [judge.<key>=<value> ...]`: see `tasks.judge.cli`."""

import sys

from tasks.judge.cli import main

if __name__ == "__main__":
    sys.exit(main())
