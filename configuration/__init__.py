"""Model presets and (later) training recipes, shipped as `modeling_missrec.configuration`."""
