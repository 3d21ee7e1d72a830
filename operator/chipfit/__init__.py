"""chipfit: GPU-aware inference control plane (API models, CLI, renderers, operator)."""

__version__ = "0.1.0"
