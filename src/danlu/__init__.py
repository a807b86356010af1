"""danlu (丹炉): from raw domain documents to a trained, evaluated and served domain LLM."""

__version__ = "0.1.0"
