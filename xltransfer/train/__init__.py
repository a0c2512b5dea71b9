"""Training: optimizer, schedules, state, the partitioned trainer, input, orbax checkpoints.

`run.train` is the gin-configurable loop that ties the pieces together (the `xltransfer train`
command, xltransfer/commands/train.py, parses the config and calls it). `initial_state` starts
a run from another checkpoint (T5X's optimizer state included), `trained_run` and `t5x_export`
read a finished run back for `xltransfer convert`. The modules are usable from Python as well.
"""
