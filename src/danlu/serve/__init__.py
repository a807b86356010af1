"""Serving: a continuous-batching generation engine (engine.py), the OpenAI-compatible API (api.py, server.py:
`danlu serve`), vLLM as an optional engine (vllm.py) and the terminal chat (chat.py: `danlu chat`)."""
