"""Package metadata for xltransfer.

Version ranges are the ones that resolve together on Python 3.11 (jax 0.10.x is the newest jax
that the package index serves here; seqio 0.0.20 wants tensorflow 2.21 and tfds 4.9.10).
"""
from setuptools import find_namespace_packages, find_packages, setup

CORE = [
    # 0.10.2 (what CI installs: the newest its index serves) through 0.11.x (the GPU machine's).
    "jax>=0.10.2,<0.12",
    "jaxlib>=0.10.2,<0.12",
    "flax>=0.12,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12,<0.13",
    "clu>=0.0.12,<0.1",  # metric writers (xltransfer/scalar_summaries.py)
    "seqio==0.0.20",
    "tensorflow>=2.21,<2.22",
    "tensorflow-text>=2.21,<2.22",
    "tensorflow-datasets==4.9.10",
    "tensorstore>=0.1.70",
    "gin-config>=0.5,<0.6",
    "sentencepiece>=0.2,<0.3",
    "msgpack>=1.0",
    "numpy>=1.26",
    "seqeval==1.2.2",
    "matplotlib>=3.8",
    "tensorboard>=2.21,<2.22",
]
HF = ["torch==2.13.0", "transformers>=5.0,<6", "safetensors>=0.4"]

# The top-level gin/ configs are installed as package data in xltransfer/gin/ (a data-only
# package mapped onto the repository's gin/), so that `--gin_file=models/mt5_small.gin` and
# the `include` lines inside the configs work without a checkout (xltransfer/gin_paths.py
# finds them).
# Each subdirectory is listed as a package too: setuptools warns about (and may drop) data
# directories that are importable but not listed.
# The top-level tasks/ (the study's seqio registrations, where a user reads the catalogue and
# adds a task) is the package xltransfer.tasks in the same way.
GIN_PACKAGES = ["xltransfer.gin"] + [f"xltransfer.gin.{name}"
                                     for name in find_namespace_packages(where="gin")]

setup(
    name="xltransfer",
    version="0.1.0",
    description="mT5 training and zero-shot XTREME-R evaluation for cross-lingual intermediate-task studies",
    packages=(find_packages(include=["xltransfer", "xltransfer.*"]) + ["xltransfer.tasks"]
              + GIN_PACKAGES),
    package_dir={"xltransfer.gin": "gin", "xltransfer.tasks": "tasks"},
    package_data={"xltransfer": ["assets/*", "assets/**/*"],
                  "xltransfer.tasks": ["README.md", "template_data/*.tsv"],
                  **{name: ["*.gin"] for name in GIN_PACKAGES}},
    include_package_data=True,
    python_requires=">=3.11",
    install_requires=CORE,
    extras_require={
        "tpu": ["jax[tpu]>=0.10.2,<0.12"],
        "gpu": ["jax[cuda12]>=0.10.2,<0.12"],
        "hf": HF,
        "test": HF + ["pytest>=8", "pytest-xdist>=3.5", "libtpu==0.0.42.1"],
    },
    entry_points={"console_scripts": ["xltransfer=xltransfer.cli:main"]},
)
