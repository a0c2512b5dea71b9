#!/usr/bin/env python3
"""SLURM launcher for GPU clusters; the code is `xltransfer.launch.slurm`. See launch/README.md."""
import sys

from xltransfer import command_line
from xltransfer.launch import slurm

if __name__ == "__main__":
  sys.exit(command_line.run_command(slurm.main, "launch/slurm.py"))
