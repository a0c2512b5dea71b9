#!/usr/bin/env python3
"""Cloud TPU VM launcher; the code is `xltransfer.launch.tpu`. See launch/README.md."""
import sys

from xltransfer import command_line
from xltransfer.launch import tpu

if __name__ == "__main__":
  sys.exit(command_line.run_command(tpu.main, "launch/tpu.py"))
