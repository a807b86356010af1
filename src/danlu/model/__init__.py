"""Models: create/load Hugging Face causal LMs, resize embeddings."""
