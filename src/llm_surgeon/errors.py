"""Errors that mean "the user asked for something that cannot be done", not a bug.

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps
its traceback.
"""


class LLMSurgeonError(Exception):
    """Base class of every user-facing error of llm-surgeon."""


class UnsupportedArchitectureError(LLMSurgeonError):
    pass


class ModelLoadError(LLMSurgeonError):
    pass


class DataError(LLMSurgeonError):
    pass


class ConfigError(LLMSurgeonError):
    pass
