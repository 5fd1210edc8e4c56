"""Build a domain from any source, print its statistics and optionally export it as a Hub-ready dataset folder.

python -m modeling_missrec.pipelines.data.build --domain Scientific --data_dir ../shared/data/amazon-scientific-mm
python -m modeling_missrec.pipelines.data.build --domain Office --source raw --data_dir raw/ --text_encoder sentence
python -m modeling_missrec.pipelines.data.build --domain MovieLens100K --source atomic --data_dir ml-100k/
python -m modeling_missrec.pipelines.data.build --domain demo --export_dir exports/demo-dataset
python -m modeling_missrec.pipelines.data.build --domain Scientific --data_dir ../shared/data/amazon-scientific-mm \
    --reencode_text_to data/scientific-minilm --text_encoder sentence [--drop_images]
"""

from __future__ import annotations

import argparse
import json

from ...hub_cards.dataset_cards import export_domain
from .builder import SOURCES
from .domain_data import DOWNSTREAM_DOMAINS, PRETRAINING_DOMAINS
from .loading import domain_statistics, load_domain
from .text_reencoding import reencode_text_features


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--domain",
        default="demo",
        help=f"'demo', a pre-training domain {list(PRETRAINING_DOMAINS)}, a downstream domain "
        f"{list(DOWNSTREAM_DOMAINS)}, or the file prefix of one's own MISSRec-format domain",
    )
    parser.add_argument("--source", default=None, choices=SOURCES, help="default: demo for demo, else missrec")
    parser.add_argument(
        "--data_dir", default=None, help="MISSRec-format files (missrec), raw 2018 files (raw) or atomic files (atomic)"
    )
    parser.add_argument("--cache_dir", default=None, help="datasets cache folder")
    parser.add_argument("--force_rebuild", action="store_true", help="ignore the cache (raw preparation included)")
    parser.add_argument("--max_history", type=int, default=50, help="most recent items kept per history")
    parser.add_argument("--text_dim", type=int, default=None, help="expected text width (default: from the files)")
    parser.add_argument("--image_dim", type=int, default=None, help="expected image width (default: from the files)")
    extracted = parser.add_argument_group("feature extraction (--source raw / atomic, --reencode_text_to)")
    extracted.add_argument(
        "--text_encoder", default=None, choices=["clip", "sentence"], help="default: sentence (atomic), clip (raw)"
    )
    extracted.add_argument("--text_model", default=None, help="text model path or Hub id (default: per encoder)")
    extracted.add_argument("--device", default=None, help="feature extraction device (default: cuda if available)")
    extracted.add_argument("--batch_size", type=int, default=64, help="feature extraction batch size")
    atomic = parser.add_argument_group("RecBole atomic files (--source atomic)")
    atomic.add_argument("--text_fields", nargs="+", default=None, help=".item columns of the text (default: all)")
    raw = parser.add_argument_group("raw Amazon 2018 source (--source raw)")
    raw.add_argument("--min_interactions", type=int, default=5, help="k of the k-core filter (users and items)")
    raw.add_argument("--image_model", default=None, help="CLIP model path or Hub id for images")
    raw.add_argument("--image_dir", default=None, help="folder of <ASIN>.jpg/.png images")
    reencode = parser.add_argument_group("re-encoding a MISSRec-format folder's text")
    reencode.add_argument("--reencode_text_to", default=None, help="write a copy with --text_encoder text features")
    reencode.add_argument("--drop_images", action="store_true", help="leave the image features out of the copy")
    demo = parser.add_argument_group("demo source")
    demo.add_argument("--demo_num_items", type=int, default=600)
    demo.add_argument("--demo_num_users", type=int, default=1000)
    demo.add_argument("--demo_seed", type=int, default=0)
    parser.add_argument("--export_dir", default=None, help="write parquet files and a dataset card here")
    args = parser.parse_args(argv)
    extraction = ("text_encoder", "text_model", "device", "batch_size")  # also what --reencode_text_to uses
    sources = {"min_interactions": ("raw",), "image_model": ("raw",), "image_dir": ("raw",), "text_fields": ("atomic",)}
    sources.update({name: ("raw", "atomic") for name in extraction})
    for name, allowed in sources.items():
        reencoding = args.reencode_text_to is not None and name in extraction
        if getattr(args, name) != parser.get_default(name) and args.source not in allowed and not reencoding:
            also = " or with --reencode_text_to" if name in extraction else ""
            parser.error(f"--{name} only applies with --source {' / '.join(allowed)}{also}")
    if args.drop_images and not args.reencode_text_to:
        parser.error("--drop_images only applies with --reencode_text_to")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.reencode_text_to:
        folder = reencode_text_features(
            args.data_dir,
            args.domain,
            args.reencode_text_to,
            text_encoder=args.text_encoder or "sentence",
            text_model=args.text_model,
            keep_images=not args.drop_images,
            batch_size=args.batch_size,
            device=args.device,
        )
        print(f"re-encoded {args.domain}'s text into {folder}")
        args.data_dir = str(folder)
    options = {"max_history": args.max_history, "text_dim": args.text_dim, "image_dim": args.image_dim}
    extraction = {"text_encoder": args.text_encoder, "text_model": args.text_model, "device": args.device}
    if args.source == "raw":
        options.update(
            min_interactions=args.min_interactions,
            image_model=args.image_model,
            image_dir=args.image_dir,
            batch_size=args.batch_size,
            **extraction,
        )
    if args.source == "atomic":
        options.update(text_fields=args.text_fields, batch_size=args.batch_size, **extraction)
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
    if "statistics" in domain.build:
        stats["build"] = domain.build["statistics"]
    print(json.dumps(stats, indent=2))
    if args.export_dir:
        print(f"exported to {export_domain(domain, args.export_dir)}")
    return stats


if __name__ == "__main__":
    main()
