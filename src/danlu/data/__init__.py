"""Data stage: ingest -> clean/dedup -> chunk -> stats -> tokenize."""
