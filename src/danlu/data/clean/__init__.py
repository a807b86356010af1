"""`danlu data clean`: configurable, explainable cleaning (normalisers, PII masks, filters, dedup)."""

from danlu.data.clean.config import CleanConfig, load_clean_config
from danlu.data.clean.pipeline import clean

__all__ = ["CleanConfig", "clean", "load_clean_config"]
