"""Build a domain from any source, print its statistics and optionally export it as a Hub-ready dataset folder.

python -m modeling_missrec.pipelines.build --domain Scientific --data_dir ../shared/data/amazon-scientific-mm
python -m modeling_missrec.pipelines.build --domain Office --source raw --data_dir raw/ --text_encoder sentence
python -m modeling_missrec.pipelines.build --domain demo --export_dir exports/demo-dataset
"""

from __future__ import annotations

import argparse
import json

from ..hub_cards.dataset_cards import export_domain
from .builder import SOURCES
from .domain_data import AMAZON_CATEGORIES
from .loading import domain_statistics, load_domain


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default="demo", choices=[*AMAZON_CATEGORIES, "demo"])
    parser.add_argument("--source", default=None, choices=SOURCES, help="default: demo for demo, else missrec")
    parser.add_argument("--data_dir", default=None, help="MISSRec-format files (missrec) or raw 2018 files (raw)")
    parser.add_argument("--cache_dir", default=None, help="datasets cache folder")
    parser.add_argument("--max_history", type=int, default=50)
    parser.add_argument("--text_encoder", default="clip", choices=["clip", "sentence"], help="raw source only")
    parser.add_argument("--text_model", default=None, help="raw source: text model path or Hub id")
    parser.add_argument("--image_model", default=None, help="raw source: CLIP model path or Hub id")
    parser.add_argument("--image_dir", default=None, help="raw source: folder of <ASIN>.jpg/.png images")
    parser.add_argument("--device", default=None, help="feature extraction device (default: cuda if available)")
    parser.add_argument("--export_dir", default=None, help="write parquet files and a dataset card here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    options = {"max_history": args.max_history}
    if args.source == "raw":
        options.update(
            text_encoder=args.text_encoder,
            text_model=args.text_model,
            image_model=args.image_model,
            image_dir=args.image_dir,
            device=args.device,
        )
    domain = load_domain(args.domain, source=args.source, data_dir=args.data_dir, cache_dir=args.cache_dir, **options)
    stats = domain_statistics(domain)
    print(json.dumps(stats, indent=2))
    if args.export_dir:
        print(f"exported to {export_domain(domain, args.export_dir)}")
    return stats


if __name__ == "__main__":
    main()
