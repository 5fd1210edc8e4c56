"""Write small raw Amazon Review 2018 files (and item images) with their expected processing outcome.

The files use the real 2018 schema: reviews with `overall`, `verified`, `reviewTime`, `reviewerID`, `asin`,
`style`, `reviewerName`, `reviewText`, `summary`, `unixReviewTime`, sometimes `vote` and `image`; metadata with
`category`, `tech1`, `description`, `title`, `also_buy`, `brand`, `feature`, `rank`, `main_cat`, `price`,
`asin`, and `imageURL` / `imageURLHighRes` on most lines. Metadata lines are JSON or Python dict literals.

Built in: reviews written out of time order, same-day ties inside users, exact duplicate reviews (another
`style`/`vote`), a repeat purchase, reviews of an item without metadata, a repeated metadata line, users with
too few reviews, and a cascade that the k-core loop needs several rounds to resolve (an item dropping below
the threshold takes a user with it, who takes another item with him). The expected outcome is computed here
with plain Python (sets, Counters and a naive k-core loop), independently of the module under test.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from pathlib import Path

DAY = 86400
BASE_TIME = 1_400_025_600  # 2014-05-14, a midnight: 2018 review times are whole days

BRANDS = ["Gorilla", "3M", "DAP", "Shop-Vac", "Rubbermaid Commercial Products", "Scott", "General Tools"]
NOUNS = ["Glue", "Tape", "Caulk", "Filter Bag", "Container Lid", "Shop Towels", "Grommet Kit", "Gloves"]
ADJECTIVES = ["Waterproof", "Heavy Duty", "Disposable", "Industrial", "Clear", "Blue", "Compact", "Large"]
SUBCATEGORIES = [
    ["Tapes, Adhesives & Sealants", "Adhesive Tapes"],
    ["Janitorial & Sanitation Supplies", "Cleaning Tools"],
    ["Lab & Scientific Products", "Lab Supplies"],
    ["Industrial Hardware", "Grommets"],
]


def _asin(n: int) -> str:
    return f"B00FIX{n:04d}"


def _user(n: int) -> str:
    return f"A{n:03d}FIXTUREUSER"


def _items(rng: random.Random, num_items: int) -> tuple[list[dict], dict[str, str]]:
    """Metadata records and the expected text of each item (special cases first, then templated ones)."""
    records, texts = [], {}
    special = [
        # HTML entities, tags, quotes, trailing dots, a category entity, an empty category list, no fields.
        (
            {
                "title": "Nitrile Gloves &amp; Liners, <b>Large</b> &quot;Pro&quot; Pack...",
                "brand": "Acme &amp; Co",
                "category": ["Industrial &amp; Scientific", "Lab &amp; Scientific Products"],
            },
            "Nitrile Gloves & Liners, Large Pro Pack. Industrial & Scientific Lab & Scientific Products. Acme & Co.",
        ),
        ({"title": "Beaker Set\n 250 ml", "category": [], "brand": ""}, "Beaker Set 250 ml."),
        ({}, ""),
        (
            {"title": "", "category": ["Industrial & Scientific", "Safety"], "brand": "Honeywell"},
            "Industrial & Scientific Safety. Honeywell.",
        ),
        (
            {"title": "Caution Tape 3&#34; x 1000 ft.", "category": ["Industrial & Scientific"], "brand": "Presco"},
            "Caution Tape 3 x 1000 ft. Industrial & Scientific. Presco.",
        ),
    ]
    for n in range(num_items):
        asin = _asin(n)
        if n < len(special):
            fields, text = special[n]
        else:
            title = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {n}"
            categories = ["Industrial & Scientific", *rng.choice(SUBCATEGORIES)]
            brand = rng.choice(BRANDS)
            fields = {"title": title, "category": categories, "brand": brand}
            text = f"{title}. {' '.join(categories)}. {brand}."
        record = {
            "category": fields.get("category"),
            "tech1": "",
            "description": [f"Description of item {n}.", "Made of <i>plastic</i>."],
            "fit": "",
            "title": fields.get("title"),
            "also_buy": [_asin((n + 1) % num_items)],
            "tech2": "",
            "brand": fields.get("brand"),
            "feature": ["Durable", "Easy to use"],
            "rank": f"{rng.randint(1000, 900000):,} in Industrial & Scientific (",
            "also_view": [],
            "main_cat": "Industrial & Scientific",
            "similar_item": "",
            "date": "",
            "price": f"${rng.randint(2, 90)}.{rng.randint(0, 99):02d}",
            "asin": asin,
        }
        record = {k: v for k, v in record.items() if v is not None}
        if n % 4 != 1:  # some items have no image URLs at all
            record["imageURL"] = [f"https://images-na.ssl-images-amazon.com/images/I/{asin}._SS40_.jpg"]
            record["imageURLHighRes"] = [f"https://images-na.ssl-images-amazon.com/images/I/{asin}.jpg"]
        if n % 5 == 3:
            record["details"] = {"Item Weight:": "1.2 pounds", "Shipping Weight:": "1.4 pounds"}
        records.append(record)
        texts[asin] = text
    return records, texts


def _review(rng: random.Random, user: str, asin: str, day: int, **extra) -> dict:
    review = {
        "overall": float(rng.randint(1, 5)),
        "verified": rng.random() < 0.8,
        "reviewTime": "placeholder",
        "reviewerID": user,
        "asin": asin,
        "style": {"Size:": f" {rng.choice(['1 Pack', '2 Pack', 'Large'])}"},
        "reviewerName": f"Reviewer {user[1:4]}",
        "reviewText": f"Works as described. <br />Bought for the lab ({asin}).",
        "summary": rng.choice(["Five Stars", "Good value", "Meh", "As expected"]),
        "unixReviewTime": BASE_TIME + day * DAY,
    }
    if rng.random() < 0.3:
        review["vote"] = str(rng.randint(2, 40))
    if rng.random() < 0.1:
        review["image"] = [f"https://images-na.ssl-images-amazon.com/images/I/{user}{asin}.jpg"]
    review.update(extra)
    return review


def write_raw_fixture(
    folder: str | Path,
    *,
    domain: str = "Scientific",
    category: str = "Industrial_and_Scientific",
    seed: int = 0,
    meta_format: str = "mixed",
    min_interactions: int = 5,
    images: bool = True,
) -> dict:
    """Write `<category>.json.gz`, `meta_<category>.json.gz` and `images/` into `folder`.

    Args:
        meta_format: `"json"`, `"python"` (every meta line a Python dict literal) or `"mixed"` (every third).
        min_interactions: the k-core threshold the expected outcome is computed for (users and items).
        images: write `images/` (PNGs for some items, one `.JPG`, one item with both `.jpg` and `.png`).

    Returns:
        `reviews_path`, `meta_path`, `image_dir` (None without images), `domain`, `min_interactions`, and the
        expected outcome: `users` (reviewerIDs, order of first review line), `sequences` ({user: [asin, ...]}
        oldest first), `item_order` (ASINs by item id 1..N), `texts` and `has_image` ({asin: ...}),
        `image_files` ({asin: path}), `reviews` (review lines), `duplicates`, `without_metadata`,
        `k_core_rounds`, `removed_users`.
    """
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    num_items = 20
    meta_records, texts = _items(rng, num_items)
    ghost = "B00NOMETA1"  # reviewed a lot, but no metadata line
    cascade_item, rare_item = _asin(num_items - 1), _asin(num_items - 2)
    core_items = [_asin(n) for n in range(num_items - 2)]

    reviews: list[dict] = []
    # Core users: 6-10 distinct core items each, some same-day ties.
    for u in range(30):
        user = _user(u)
        for asin in rng.sample(core_items, rng.randint(6, 10)):
            reviews.append(_review(rng, user, asin, rng.randint(0, 12)))
        if u < 7:
            reviews.append(_review(rng, user, ghost, rng.randint(0, 12)))
    # An explicit same-day tie whose file order is not the ASIN order, and a repeat purchase.
    reviews += [_review(rng, _user(0), _asin(9), 20), _review(rng, _user(0), _asin(6), 20)]
    reviews += [_review(rng, _user(1), _asin(7), 21), _review(rng, _user(1), _asin(7), 25)]
    # Cascade: the rare item has 3 reviews; the weak user has exactly 5 (one of them the rare item); the
    # cascade item has 5 (one from the weak user). Round 1 drops the rare item, round 2 the weak user,
    # round 3 the cascade item.
    weak = _user(90)
    for asin in [cascade_item, rare_item, *core_items[:3]]:
        reviews.append(_review(rng, weak, asin, rng.randint(0, 12)))
    for u in (2, 3, 4, 5):
        reviews.append(_review(rng, _user(u), cascade_item, rng.randint(0, 12)))
    for u in (6, 7):
        reviews.append(_review(rng, _user(u), rare_item, rng.randint(0, 12)))
    # Sparse users (1-4 reviews): gone in round 1.
    for u in range(50, 58):
        for asin in rng.sample(core_items, rng.randint(1, 4)):
            reviews.append(_review(rng, _user(u), asin, rng.randint(0, 12)))
    rng.shuffle(reviews)  # the file is not in time order
    # Exact duplicates (same user, item and time; another style or vote), written later in the file.
    for review in rng.sample(reviews, 6):
        duplicate = dict(review, style={"Size:": " 3 Pack"}, vote="1")
        reviews.insert(rng.randint(reviews.index(review) + 1, len(reviews)), duplicate)
    for review in reviews:
        review["reviewTime"] = _review_time(review["unixReviewTime"])

    stem = category
    reviews_path, meta_path = folder / f"{stem}.json.gz", folder / f"meta_{stem}.json.gz"
    with gzip.open(reviews_path, "wt", encoding="utf-8") as f:
        for review in reviews:
            f.write(json.dumps(review) + "\n")
    repeated = dict(meta_records[6], title="A LATER DUPLICATE LINE (ignored)")
    with gzip.open(meta_path, "wt", encoding="utf-8") as f:
        for n, record in enumerate([*meta_records, repeated]):
            python = meta_format == "python" or (meta_format == "mixed" and n % 3 == 2)
            f.write((repr(record) if python else json.dumps(record)) + "\n")

    image_files: dict[str, str] = {}
    image_dir = None
    if images:
        from PIL import Image

        image_dir = folder / "images"
        image_dir.mkdir(exist_ok=True)
        for n in range(num_items):
            if n % 3 == 0:
                continue  # no image for these
            asin = _asin(n)
            color = (n * 11 % 256, n * 37 % 256, n * 73 % 256)
            suffix = ".JPG" if n == 4 else ".png"
            path = image_dir / f"{asin}{suffix}"
            Image.new("RGB", (12, 10), color).save(path, format="JPEG" if suffix == ".JPG" else "PNG")
            if n == 5:  # both a .jpg and a .png: the .jpg wins
                path = image_dir / f"{asin}.jpg"
                Image.new("RGB", (12, 10), (255 - color[0], 0, 0)).save(path, format="JPEG")
            image_files[asin] = str(path)
        Image.new("RGB", (4, 4)).save(image_dir / "B00NOTINDATA.png")
        (image_dir / "README.txt").write_text("not an image")

    expected = _expected(reviews, {r["asin"] for r in meta_records}, min_interactions)
    expected.update(
        reviews_path=str(reviews_path),
        meta_path=str(meta_path),
        image_dir=None if image_dir is None else str(image_dir),
        domain=domain,
        min_interactions=min_interactions,
        texts={asin: texts[asin] for asin in expected["item_order"]},
        has_image={asin: asin in image_files for asin in expected["item_order"]},
        image_files={asin: image_files[asin] for asin in expected["item_order"] if asin in image_files},
    )
    return expected


def _review_time(unix: int) -> str:
    import datetime

    date = datetime.datetime.fromtimestamp(unix, datetime.timezone.utc)
    return f"{date.month:02d} {date.day}, {date.year}"


def _expected(reviews: list[dict], meta_asins: set[str], k: int) -> dict:
    """The processing outcome, the slow and obvious way."""
    rows = [(line, r["reviewerID"], r["asin"], r["unixReviewTime"]) for line, r in enumerate(reviews, 1)]
    first_line: dict[str, int] = {}
    for line, user, _, _ in rows:
        first_line.setdefault(user, line)
    without_metadata = sum(1 for row in rows if row[2] not in meta_asins)
    seen, kept, duplicates = set(), [], 0
    for row in rows:
        if row[2] not in meta_asins:
            continue
        if row[1:] in seen:
            duplicates += 1
            continue
        seen.add(row[1:])
        kept.append(row)
    rounds = 0
    while True:
        user_count = Counter(row[1] for row in kept)
        item_count = Counter(row[2] for row in kept)
        smaller = [row for row in kept if user_count[row[1]] >= k and item_count[row[2]] >= k]
        if len(smaller) == len(kept):
            break
        kept, rounds = smaller, rounds + 1
    users = sorted({row[1] for row in kept}, key=first_line.__getitem__)
    sequences = {}
    for user in users:
        mine = sorted((row for row in kept if row[1] == user), key=lambda row: (row[3], row[0]))
        sequences[user] = [row[2] for row in mine]
    item_order: list[str] = []
    for user in users:
        for asin in sequences[user]:
            if asin not in item_order:
                item_order.append(asin)
    return {
        "users": users,
        "sequences": sequences,
        "item_order": item_order,
        "reviews": len(rows),
        "duplicates": duplicates,
        "without_metadata": without_metadata,
        "k_core_rounds": rounds,
        "removed_users": sorted(set(first_line) - set(users)),
    }
