"""invdes core library: domains, VAE-GAN, training, generation, tracking and the generator API.

The core runs as plain Python; Prefect (flows/) orchestrates it and MLflow records it.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Generator", "load_generator", "__version__"]


def __getattr__(name: str):
    # lazy: `import design` stays cheap and free of torch/pymatgen side effects
    if name in ("Generator", "load_generator"):
        from design import api

        return getattr(api, name)
    raise AttributeError(f"module 'design' has no attribute {name!r}")
