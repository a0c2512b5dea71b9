"""The CLI layer: `xltransfer NAME` is the module `xltransfer.commands.NAME`.

Each module parses its own flags and calls into the packages below it; `main(argv) -> int`.
The table of commands is xltransfer/command_line.py; xltransfer/cli.py dispatches.
"""
