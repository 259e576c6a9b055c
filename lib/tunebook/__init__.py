"""tunebook: notebook-first domain fine-tuning of LLMs."""

__version__ = "0.1.0"
