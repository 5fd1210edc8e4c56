"""An interactive page for looking at what a MISSRec model recommends (a Gradio app, ready as a Hub Space).

    python -m modeling_missrec.demo                                   # the main job's model (runs/demo-finetune)
    python -m modeling_missrec.demo --model exports/missrec-demo      # an exported folder or a Hub id
    python -m modeling_missrec.demo --model BASE --adapter ADAPTER    # a LoRA adapter on its base
    python -m modeling_missrec.demo --image_dir images/               # show <image_dir>/<source_id>.jpg

The model is served by the `sequential-recommendation` pipeline, so the page recommends exactly what the pipeline
does. On the page a person searches the catalogue by text, builds a history by adding items (or types item ids),
sees the top-k recommendations with their text, images, scores and what drove them (the modality weights of the
item fusion, the history item whose removal lowers the score most, the interests shared with the history), switches
`exclude_history` and a candidate filter, and, for inductive models whose text features come from a known text
encoder (`--text_encoder`), adds a new item by typing its text and sees where it ranks. A bad entry shows the
pipeline's message on the page.

Needs the `demo` extra: `pip install -e ".[demo]"` (Gradio).

What drove a recommendation, as far as the model can say (`explain_recommendations`), for each recommended item:
its modality weights in the item fusion (`MISSRecItemFusion.modality_weights`), the history item whose removal
changes its score most (leave-one-out over the items the encoder reads, one batch), and the interests it shares
with the history (the interest tokens the encoder reads), all from the model's own scores (`score_items`).

This module imports nothing of the package at load time: `export --space` copies it next to an exported model
as the Space's app, where the model's code comes from the folder (remote code).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_MODEL = "runs/demo-finetune"  # the main job's fine-tuned adapter (its base: runs/demo-pretrain)
MAIN_JOB = (
    "python train.py --config configuration/recipes/demo-pretrain.yaml && "
    "python train.py --config configuration/recipes/demo-finetune.yaml"
)
SEARCH_RESULTS = 20


def resolve_model(model: str, adapter: str | None) -> tuple[str, str | None]:
    """`(base, adapter)` for `--model` / `--adapter`: an adapter folder given as `--model` is served on the base
    its `adapter_config.json` names."""
    folder = Path(model)
    if adapter is None and (folder / "adapter_config.json").is_file():
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ValueError(
                f"{model} is an adapter folder that does not name its base: pass --model BASE --adapter {model}"
            )
        return base, model
    if model == DEFAULT_MODEL and not folder.is_dir():
        raise FileNotFoundError(f"{model} does not exist: run the main job first ({MAIN_JOB}), or pass --model")
    return model, adapter


def load_recommender(model: str, adapter: str | None = None):
    """The `sequential-recommendation` pipeline for `model` (+ `adapter`), its item index built (the first call
    computes and caches the catalogue's fused embeddings). Prints what it does and how long it takes."""
    from transformers import pipeline

    try:
        import modeling_missrec  # noqa: F401  (registers the task and the model classes)

        remote = {}
    except ImportError:  # a Space or a transformers-only user: the code comes from the model folder
        remote = {"trust_remote_code": True}
    base, adapter = resolve_model(model, adapter)
    started = time.perf_counter()
    print(f"loading {base}" + (f" with adapter {adapter}" if adapter else "") + " ...", flush=True)
    pipe = pipeline("sequential-recommendation", model=base, adapter=adapter, **remote)
    print(f"loaded in {time.perf_counter() - started:.1f} s; building the item index ...", flush=True)
    started = time.perf_counter()
    pipe([1], top_k=1, exclude_history=False)
    print(f"item index of {pipe.num_items} items built in {time.perf_counter() - started:.1f} s", flush=True)
    return pipe


@dataclass
class Catalogue:
    """The served catalogue's names, for search and display: row `i` is item id `i + 1`."""

    source_ids: list[str]
    texts: list[str]
    popularity: np.ndarray
    words: list[list[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.words = [re.findall(r"\w+", f"{s} {t}".lower()) for s, t in zip(self.source_ids, self.texts)]

    @classmethod
    def of(cls, pipe) -> Catalogue:
        metadata = pipe.item_metadata or {}
        n = pipe.num_items
        source_ids = metadata.get("source_ids") or [str(i) for i in range(1, n + 1)]
        texts = metadata.get("texts") or [""] * n
        popularity = np.asarray(metadata.get("popularity") or [0] * n, dtype=np.float64)
        return cls([str(s) for s in source_ids], [t or "" for t in texts], popularity)

    def search(self, query: str, limit: int = SEARCH_RESULTS) -> list[int]:
        """Item ids whose source id or text holds every word of `query` (case-insensitive; a query word of three
        or more characters also matches the start of a word), most popular first; the most popular items for an
        empty query."""

        def matches(word: str, words: list[str]) -> bool:
            return any(w == word or (len(word) >= 3 and w.startswith(word)) for w in words)

        query_words = re.findall(r"\w+", query.lower())
        hits = [i for i, words in enumerate(self.words) if all(matches(q, words) for q in query_words)]
        hits.sort(key=lambda i: (-self.popularity[i], i))
        return [i + 1 for i in hits[:limit]]

    def label(self, item_id: int) -> str:
        text = self.texts[item_id - 1]
        return f"{self.source_ids[item_id - 1]} · {text[:90]}" if text else self.source_ids[item_id - 1]


@torch.no_grad()
def explain_recommendations(base: Any, history: Sequence[int], item_ids: Sequence[int]) -> list[dict]:
    """Explain the scores of catalogue items `item_ids` for one `history` (item ids, most recent last).

    Args:
        base: a `MISSRecModel` (a head's `.base`; a `PeftModel`'s base model, adapted in place).
        history: the history's catalogue item ids, most recent last.
        item_ids: catalogue item ids to explain (e.g. the top-k `recommend` returned).

    Returns:
        One dict per item of `item_ids`: `{"item_id", "score", "modality_weights": {modality: weight},
        "driven_by": {"item_id", "score_drop"} or None (a one-item history), "shared_interests": [{"interest",
        "history_tokens"}, ...]}`.
    """
    if not history:
        raise ValueError("the history is empty: there is nothing to explain")
    num_items = base.config.num_items
    bad = [i for i in [*history, *item_ids] if not 1 <= int(i) <= num_items]
    if bad:
        raise ValueError(f"items {bad[:5]} are not catalogue item ids [1, {num_items}]")
    device = base.device
    read = list(history)[-base.config.max_seq_length :]  # what the encoder reads
    ids = torch.tensor(list(item_ids), dtype=torch.long, device=device)
    seq = base.embed_sequences(torch.tensor([read], device=device))
    scores = base.score_items(seq, ids)[0]

    items = base.embed_items(ids)
    logits = torch.stack([seq @ items[m].T for m in base.modality_names])  # [M, 1, C]
    weights = base.item_fusion.modality_weights(logits, base.item_presence(ids), ids)[:, 0]  # [M, C]

    drivers = None
    if len(read) > 1:
        # Row i: the history without its i-th item (left-aligned, padded with 0).
        without = torch.tensor([read[:i] + read[i + 1 :] + [0] for i in range(len(read))], device=device)
        lengths = torch.full((len(read),), len(read) - 1, device=device)
        drops = scores - base.score_items(base.embed_sequences(without, lengths), ids)  # [L, C]
        drivers = drops.max(0)

    history_interests = Counter()
    item_interests = []
    for m in base.modality_names:
        table = getattr(base, f"{m}_interest_ids")
        history_interests.update(i for i in table[torch.tensor(read, device=device)].tolist() if i)
        item_interests.append(table[ids].tolist())
    explained = []
    for c, item in enumerate(ids.tolist()):
        shared = sorted({row[c] for row in item_interests if row[c] in history_interests})
        explained.append(
            {
                "item_id": item,
                "score": float(scores[c]),
                "modality_weights": {m: float(weights[j, c]) for j, m in enumerate(base.modality_names)},
                "driven_by": None
                if drivers is None
                else {"item_id": read[int(drivers.indices[c])], "score_drop": float(drivers.values[c])},
                "shared_interests": [{"interest": i, "history_tokens": history_interests[i]} for i in shared],
            }
        )
    return explained


def parse_entries(entries: str) -> list[str | int]:
    """Comma- or space-separated item ids (numbers) or source ids, as the pipeline takes them."""
    words = [w for w in entries.replace(",", " ").split() if w]
    return [int(w) if w.isdigit() else w for w in words]


def render_history(catalogue: Catalogue, history: list[int]) -> str:
    if not history:
        return "<p id='history-empty'>The history is empty: search the catalogue and add items.</p>"
    rows = "".join(f"<li data-item-id='{i}'>{html.escape(catalogue.label(i))}</li>" for i in history)
    return f"<ol id='history'>{rows}</ol>"


def render_recommendations(catalogue: Catalogue, ranked: list[dict], explained: dict[int, dict]) -> str:
    """The top-k as an HTML table, one row per item, with the data the browser test reads (`data-item-id`)."""
    names = {i + 1: s for i, s in enumerate(catalogue.source_ids)}
    lines = []
    for rank, row in enumerate(ranked, 1):
        why = explained.get(row["item_id"])
        weights = driver = shared = ""
        if why is not None:
            weights = ", ".join(f"{m} {w:.2f}" for m, w in why["modality_weights"].items())
            if why["driven_by"] is not None:
                source = names.get(why["driven_by"]["item_id"], why["driven_by"]["item_id"])
                driver = f"{html.escape(str(source))} ({-why['driven_by']['score_drop']:+.3f})"
            shared = ", ".join(f"#{s['interest']} ({s['history_tokens']})" for s in why["shared_interests"]) or "none"
        text = row.get("text") or ""
        lines.append(
            f"<tr data-item-id='{row['item_id']}'><td>{rank}</td><td>{html.escape(str(row['source_id']))}</td>"
            f"<td>{html.escape(text[:120])}</td><td class='score'>{row['score']:.4f}</td><td>{weights}</td>"
            f"<td>{driver}</td><td>{shared}</td></tr>"
        )
    header = (
        "<tr><th>#</th><th>item</th><th>text</th><th>score</th><th>modality weights</th>"
        "<th>driven by (score change without it)</th><th>shared interests (history tokens)</th></tr>"
    )
    return f"<table id='recommendations'>{header}{''.join(lines)}</table>"


def render_new_ranks(ranked: list[dict], total: int) -> str:
    """Where each new (cold-start) item of a full ranking stands: `NEW-1 ranks 4 of 31`."""
    spans = [
        f"<li data-source-id='{html.escape(str(r['source_id']))}' data-rank='{rank}'>"
        f"{html.escape(str(r['source_id']))} ({html.escape(r.get('text') or '')}) ranks {rank} of {total}</li>"
        for rank, r in enumerate(ranked, 1)
        if str(r["source_id"]).startswith("NEW-")
    ]
    return f"<ul id='new-ranks'>{''.join(spans)}</ul>"


def build_app(pipe, image_dir: str | None = None, text_encoder: str | None = None):
    """The Gradio `Blocks` page over `pipe` (a `sequential-recommendation` pipeline)."""
    import gradio as gr

    catalogue = Catalogue.of(pipe)
    base = pipe.recommender.base  # the MISSRecModel the pipeline's recommendation head serves
    config = base.config
    can_add_new = config.id_mode == "inductive" and text_encoder is not None and "text" in config.modality_names
    images = Path(image_dir) if image_dir else None

    def message(text: str = "") -> str:
        return f"<p id='message' class='error'>{html.escape(text)}</p>" if text else "<p id='message'></p>"

    def search(query: str):
        ids = catalogue.search(query or "")
        return gr.update(choices=[(catalogue.label(i), i) for i in ids], value=None)

    def cold_items(new_items: list[dict]) -> dict | None:
        if not new_items:
            return None
        text = np.stack([item["text_features"] for item in new_items])
        out = {"text_features": text, "source_ids": [i["source_id"] for i in new_items]}
        out["texts"] = [i["text"] for i in new_items]
        if "image" in config.modality_names:  # all-zero rows: the new items have no image
            out["image_features"] = np.zeros((len(new_items), config.image_feature_dim), dtype=np.float32)
        return out

    def recommend(history: list[int], top_k: int, exclude: bool, candidates: str, new_items: list[dict]):
        gallery = []
        if not history:
            return render_recommendations(catalogue, [], {}), message(), gallery
        try:
            options = {"top_k": int(top_k), "exclude_history": bool(exclude), "return_text": True}
            if candidates and candidates.strip():
                options["candidates"] = parse_entries(candidates)
                # A short allow-list ranks all it holds rather than asking for more items than there are.
                options["top_k"] = min(options["top_k"], len(set(options["candidates"])) + len(new_items))
            cold = cold_items(new_items)
            if cold is not None:
                options["cold_start_items"] = cold
            ranked = pipe(list(history), **options)
            known = [r["item_id"] for r in ranked if r["item_id"] <= pipe.num_items]
            explained = {e["item_id"]: e for e in explain_recommendations(base, history, known)}
            new_ranks = ""
            if cold is not None:  # where each new item ranks among every candidate, in the top-k or not
                pool = len(set(options["candidates"])) if "candidates" in options else pipe.num_items
                everything = pipe(list(history), **{**options, "top_k": pool + len(new_items)})
                new_ranks = render_new_ranks(everything, len(everything))
        except ValueError as error:  # the pipeline's own message, on the page
            return render_recommendations(catalogue, [], {}), message(str(error)), gallery
        if images is not None:
            for row in ranked:
                path = images / f"{row['source_id']}.jpg"
                if path.is_file():
                    gallery.append((str(path), str(row["source_id"])))
        return render_recommendations(catalogue, ranked, explained) + new_ranks, message(), gallery

    def add(selected, history: list[int]):
        if selected is None:
            return history, render_history(catalogue, history), message("select an item of the search results first")
        history = [*history, int(selected)]
        return history, render_history(catalogue, history), message()

    def set_history(entries: str, history: list[int]):
        try:  # the pipeline's own reading of a history: unknown and empty entries get its messages
            inputs = pipe.preprocess(parse_entries(entries or ""))
        except ValueError as error:
            return history, render_history(catalogue, history), message(str(error))
        ids = inputs["item_seq"][0, : int(inputs["lengths"][0])].tolist()
        return ids, render_history(catalogue, ids), message()

    def clear():
        return [], render_history(catalogue, []), message()

    def add_new_item(text: str, new_items: list[dict]):
        if not can_add_new:
            return new_items, message(
                "new items need an inductive model whose text features come from a known text encoder "
                "(start the page with --text_encoder sentence|clip)"
            )
        if not text or not text.strip():
            return new_items, message("type the new item's text first")
        try:
            from modeling_missrec.pipelines.data.feature_extraction import extract_text_features
        except ImportError:  # a Space: the package (and its encoders) is not installed
            return new_items, message("typing new items needs the missrec-hf package (its text encoders)")
        features = np.asarray(extract_text_features([text.strip()], kind=text_encoder))[0]
        if features.shape[-1] != config.text_feature_dim:
            return new_items, message(
                f"--text_encoder {text_encoder} gives {features.shape[-1]}-wide features; the model reads "
                f"{config.text_feature_dim}"
            )
        item = {"text_features": features, "source_id": f"NEW-{len(new_items) + 1}", "text": text.strip()}
        return [*new_items, item], message()

    with gr.Blocks(title="MISSRec recommendations") as app:
        gr.Markdown(
            f"# MISSRec recommendations\n{pipe.num_items} items · `{config.id_mode}` · modalities "
            f"`{config.modality_names}`. Build a history (most recent last) and see what the model recommends."
        )
        history = gr.State([])
        new_items = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                query = gr.Textbox(
                    label="Search the catalogue", placeholder="words of an item's text or id", elem_id="query"
                )
                search_button = gr.Button("Search", elem_id="search")
                results = gr.Radio(label="Search results", choices=[], elem_id="results")
                add_button = gr.Button("Add to history", variant="primary", elem_id="add")
                entries = gr.Textbox(label="…or type the history (item ids or source ids)", elem_id="entries")
                set_button = gr.Button("Set history", elem_id="set-history")
                clear_button = gr.Button("Clear history", elem_id="clear")
                history_view = gr.HTML(render_history(catalogue, []), elem_id="history-view")
            with gr.Column(scale=2):
                with gr.Row():
                    top_k = gr.Slider(1, min(50, pipe.num_items), value=10, step=1, label="top k", elem_id="top-k")
                    exclude = gr.Checkbox(value=True, label="exclude the history", elem_id="exclude")
                candidates = gr.Textbox(label="Only these candidates (ids, optional)", elem_id="candidates")
                with gr.Row():
                    new_text = gr.Textbox(
                        label="New item's text (cold start)", elem_id="new-text", interactive=can_add_new
                    )
                    new_button = gr.Button("Add new item", elem_id="add-new", interactive=can_add_new)
                error = gr.HTML(message(), elem_id="message-view")
                table = gr.HTML(render_recommendations(catalogue, [], {}), elem_id="recommendations-view")
                gallery = gr.Gallery(
                    label="images", visible=images is not None, columns=5, height="auto", elem_id="gallery"
                )

        ranking = [history, top_k, exclude, candidates, new_items]
        shown = [table, error, gallery]
        search_button.click(search, query, results)
        query.submit(search, query, results)
        add_button.click(add, [results, history], [history, history_view, error]).then(recommend, ranking, shown)
        set_button.click(set_history, [entries, history], [history, history_view, error]).then(
            recommend, ranking, shown
        )
        clear_button.click(clear, None, [history, history_view, error]).then(recommend, ranking, shown)
        new_button.click(add_new_item, [new_text, new_items], [new_items, error]).then(recommend, ranking, shown)
        for control in (top_k, exclude):
            control.change(recommend, ranking, shown)
        candidates.submit(recommend, ranking, shown)
        app.load(search, query, results)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"a model folder, adapter folder or Hub id (default: {DEFAULT_MODEL})"
    )
    parser.add_argument("--adapter", default=None, help="a LoRA adapter folder or Hub id to serve on --model")
    parser.add_argument("--image_dir", default=None, help="a folder of <source_id>.jpg item images to show")
    parser.add_argument(
        "--text_encoder",
        choices=("sentence", "clip"),
        default=None,
        help="the encoder of the model's text features, for new items typed on the page (default: none)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    try:
        pipe = load_recommender(args.model, args.adapter)
    except (FileNotFoundError, ValueError, OSError) as error:
        parser.error(str(error))
    app = build_app(pipe, image_dir=args.image_dir, text_encoder=args.text_encoder)
    allowed = [args.image_dir] if args.image_dir else None
    app.launch(server_name=args.host, server_port=args.port, allowed_paths=allowed)


if __name__ == "__main__":
    main()
