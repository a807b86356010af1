"""SFT and preference data import: `danlu data sft` / `danlu data pref` (stage.py), one converter per source format
(alpaca.py, sharegpt.py, openai.py), LLaMA-Factory's dataset_info.json (registry.py)."""

from danlu.data.sft.stage import ChatDataConfig, ChatDataOptions, preference_data, sft_data

__all__ = ["ChatDataConfig", "ChatDataOptions", "preference_data", "sft_data"]
