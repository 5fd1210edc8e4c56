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
from .domain_data import DOWNSTREAM_DOMAINS, PRETRAINING_DOMAINS
from .loading import domain_statistics, load_domain


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--domain",
        default="demo",
        help=f"'demo', a pre-training domain {list(PRETRAINING_DOMAINS)}, a downstream domain "
        f"{list(DOWNSTREAM_DOMAINS)}, or the file prefix of one's own MISSRec-format domain",
    )
    parser.add_argument("--source", default=None, choices=SOURCES, help="default: demo for demo, else missrec")
    parser.add_argument("--data_dir", default=None, help="MISSRec-format files (missrec) or raw 2018 files (raw)")
    parser.add_argument("--cache_dir", default=None, help="datasets cache folder")
    parser.add_argument("--force_rebuild", action="store_true", help="ignore the cache (raw preparation included)")
    parser.add_argument("--max_history", type=int, default=50, help="most recent items kept per history")
    parser.add_argument("--text_dim", type=int, default=512, help="width of the text features (files, demo)")
    parser.add_argument("--image_dim", type=int, default=512, help="width of the image features (files, demo)")
    raw = parser.add_argument_group("raw Amazon 2018 source (--source raw)")
    raw.add_argument("--min_interactions", type=int, default=5, help="k of the k-core filter (users and items)")
    raw.add_argument("--text_encoder", default="clip", choices=["clip", "sentence"])
    raw.add_argument("--text_model", default=None, help="text model path or Hub id (default: per encoder)")
    raw.add_argument("--image_model", default=None, help="CLIP model path or Hub id for images")
    raw.add_argument("--image_dir", default=None, help="folder of <ASIN>.jpg/.png images")
    raw.add_argument("--device", default=None, help="feature extraction device (default: cuda if available)")
    raw.add_argument("--batch_size", type=int, default=64, help="feature extraction batch size")
    demo = parser.add_argument_group("demo source")
    demo.add_argument("--demo_num_items", type=int, default=600)
    demo.add_argument("--demo_num_users", type=int, default=1000)
    demo.add_argument("--demo_seed", type=int, default=0)
    parser.add_argument("--export_dir", default=None, help="write parquet files and a dataset card here")
    args = parser.parse_args(argv)
    raw_options = ("min_interactions", "text_encoder", "text_model", "image_model", "image_dir", "device", "batch_size")
    given = [f"--{name}" for name in raw_options if getattr(args, name) != parser.get_default(name)]
    if given and args.source != "raw":
        parser.error(f"{', '.join(given)} only apply with --source raw")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    options = {"max_history": args.max_history, "text_dim": args.text_dim, "image_dim": args.image_dim}
    if args.source == "raw":
        options.update(
            min_interactions=args.min_interactions,
            text_encoder=args.text_encoder,
            text_model=args.text_model,
            image_model=args.image_model,
            image_dir=args.image_dir,
            device=args.device,
            batch_size=args.batch_size,
        )
    if args.domain == "demo":
        options.update(demo_num_items=args.demo_num_items, demo_num_users=args.demo_num_users, demo_seed=args.demo_seed)
    domain = load_domain(
        args.domain,
        source=args.source,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        download_mode="force_redownload" if args.force_rebuild else None,
        **options,
    )
    stats = domain_statistics(domain)
    print(json.dumps(stats, indent=2))
    if args.export_dir:
        print(f"exported to {export_domain(domain, args.export_dir)}")
    return stats


if __name__ == "__main__":
    main()
