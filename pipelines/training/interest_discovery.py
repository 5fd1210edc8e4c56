"""Interest discovery as a training step, for `train.py`'s loop and for a `transformers` `Trainer`.

MISSRec's interests are not learned by back-propagation: before every training epoch the paper clusters the
adapted embeddings of the catalogue's item-modalities into interests ([`MISSRecModel.discover_interests`]), and
the encoder then reads each history's interest tokens. Any training loop must do the same, or it trains with stale
interests. [`discover_interests_on_every_rank`] is that step; [`InterestDiscoveryCallback`] runs it at each epoch
start of a `Trainer`:

```python
trainer = Trainer(model=head, args=args, train_dataset=rows, data_collator=collator,
                  callbacks=[InterestDiscoveryCallback()])
```
"""

from __future__ import annotations

import torch
from accelerate import PartialState
from accelerate.utils import broadcast, broadcast_object_list
from transformers import TrainerCallback

from ...modeling_missrec import unwrap_missrec
from .checkpointing import match_interest_table


def discover_interests_on_every_rank(model: torch.nn.Module) -> None:
    """Discover the interests of the MISSRec model in `model` (a head, a base, a `PeftModel` or a DDP wrapper of
    one) on the main process, and broadcast the interest tables to the other ranks.

    The catalogue and interest tables are buffers that DDP does not synchronise (`broadcast_buffers=False`), and
    clustering on every rank could differ with the thread count, so the other ranks receive the main process's
    tables, sized by the K it found.
    """
    missrec = unwrap_missrec(getattr(model, "module", model))
    state = PartialState()
    if state.is_main_process:
        missrec.discover_interests()
    if state.num_processes == 1:
        return
    (num_interests,) = broadcast_object_list([missrec.config.num_interests])
    if not state.is_main_process:
        match_interest_table(missrec, (num_interests + 1, missrec.config.hidden_size))
    for name in [f"{m}_interest_ids" for m in missrec.modality_names] + ["interest_centroids"]:
        setattr(missrec, name, broadcast(getattr(missrec, name).contiguous(), from_process=0))


class InterestDiscoveryCallback(TrainerCallback):
    """Re-discovers a MISSRec model's interests at the start of every `Trainer` epoch (the paper's schedule)."""

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("InterestDiscoveryCallback needs the Trainer's model")
        discover_interests_on_every_rank(model)
