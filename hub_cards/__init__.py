"""Sharing on the Hugging Face Hub: model, adapter, base and dataset cards (`model_cards`, `base_cards`,
`dataset_cards` and their templates), the Hub-ready export of runs, pre-trained bases and domains (`export`:
`python -m modeling_missrec.hub_cards.export`), the upload (`push`), and the demo page with its Space (`space`)."""
