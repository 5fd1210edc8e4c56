"""Model, adapter and dataset cards (`huggingface_hub` cards) and the Hub-ready exports that carry them."""
