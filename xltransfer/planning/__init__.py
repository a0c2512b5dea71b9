"""Planning: compile a run's real train and inference steps for a target machine.

`machines` names the machines (TPU topologies, GPU nodes, fake CPU meshes) with their memory
and peak FLOP/s, and `accelerators` the Cloud TPU accelerator types (also read by the TPU
launcher); `devices` produces compile-only devices for them, `run_config` reads a run's gin
config as `xltransfer train` does, `flops` counts the model's FLOPs analytically, `compile`
lowers and compiles the trainer's own jitted steps on abstract, sharded inputs and measures
them, `plan` puts these together, `report` prints the result. The command line is
xltransfer/commands/plan.py.
"""
