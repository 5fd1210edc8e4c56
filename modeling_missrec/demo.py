"""`python -m modeling_missrec.demo`: the demo page, whose app lives in `modeling_missrec.hub_cards.space.demo`.

Package glue, not remote code: it is not copied into saved folders.
"""

from .hub_cards.space.demo import main

if __name__ == "__main__":
    main()
