"""tunebook: notebook-first domain fine-tuning of LLMs."""

import warnings

__version__ = "0.1.0"

# Progress bars are plain text on purpose: they render in terminals, executed notebooks and HTML
# reports alike. Libraries using tqdm.auto would otherwise warn in every notebook that ipywidgets is absent.
warnings.filterwarnings("ignore", message="IProgress not found")
# peft calls a transformers API that transformers 5 renamed; the warning is theirs, not the user's.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
