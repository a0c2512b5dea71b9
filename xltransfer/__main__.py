"""`python -m xltransfer COMMAND ...`: the same as the `xltransfer` command."""
import sys

from xltransfer import cli

if __name__ == "__main__":
  sys.exit(cli.main())
