"""`python -m xltransfer.train`: the same as `xltransfer train`."""
import sys

from xltransfer import host_memory

if __name__ == "__main__":
  host_memory.restart_with_hugepage_malloc()  # before jax is imported
  from xltransfer.errors import UserError
  from xltransfer.train.main import main
  try:
    sys.exit(main())
  except UserError as error:
    print(f"xltransfer train: error: {error}", file=sys.stderr)
    sys.exit(2)
