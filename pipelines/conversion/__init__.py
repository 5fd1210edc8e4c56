"""Bringing models from elsewhere: checkpoints of the official MISSRec code (`gimpong/MM23-MISSRec`) as
`MISSRecModel`s (`official_checkpoint`; `python -m modeling_missrec.pipelines.conversion.official_checkpoint`)."""

from .official_checkpoint import convert_state_dict, load_official_checkpoint, official_config, read_official_checkpoint

__all__ = ["convert_state_dict", "load_official_checkpoint", "official_config", "read_official_checkpoint"]
