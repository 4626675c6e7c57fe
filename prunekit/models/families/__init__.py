"""Family adapters; importing this package registers them (see ``prunekit.models.adapters``)."""

from . import gemma, gpt2, llama, opt  # noqa: F401

__all__ = ["llama", "gemma", "opt", "gpt2"]
