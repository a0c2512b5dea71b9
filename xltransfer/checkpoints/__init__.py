"""Checkpoint formats: ours (native.py), T5X in its three formats (t5x.py), HF (hf.py).

`loading.load_initial_params` reads a model's parameters from any of them into a sharding;
the trainer's own orbax checkpoints (and their optimizer state) are train/'s.
"""
