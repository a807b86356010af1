"""Tokenizers: train, expand, compare, fast encoding."""
