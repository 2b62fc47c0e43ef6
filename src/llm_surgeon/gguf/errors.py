"""The user errors of the GGUF export and the llama.cpp engine.

Both are subclasses of the project's user-error class, so the CLI prints them as one line:
they mean "this model or this machine cannot do what was asked", never a bug.
"""

from __future__ import annotations

from llm_surgeon.errors import LLMSurgeonError, UnsupportedArchitectureError


class GGUFExportError(UnsupportedArchitectureError):
    """The model cannot be written as a GGUF file that llama.cpp would run exactly like transformers.

    Raised before any file is written, with every reason found in one message.
    """


class LlamaCppUnavailableError(LLMSurgeonError):
    """The llama.cpp engine (the ``llama_cpp`` Python binding) is not installed."""
