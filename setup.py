"""Only the C extension lives here; everything else is in pyproject.toml.

The extension (danlu/tokenizer/_bpe.c, the tokenizer trainer) is optional: without a C compiler danlu still
installs and `danlu tokenizer train` falls back to rustbpe, with a warning.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "danlu.tokenizer._bpe",
            sources=["src/danlu/tokenizer/_bpe.c"],
            extra_compile_args=["-O3", "-std=c11"],
            optional=True,
        )
    ]
)
