"""The demo page and the Hub Space that serves it: `demo` is the Gradio app (`python -m modeling_missrec.demo`),
self-contained so that `app_files` can copy it into an exported folder as the Space's app."""

from .app_files import write_space_files

__all__ = ["write_space_files"]
