"""Scoring throughput of the models through the one interface the batch job uses
(``Recommender.recommend``): item-based CF next to the content model's TF kernel, on the same
users, catalogue size and k, measured side by side (interleaved batches) in one run.

    .venv/bin/python -m benchmarks.bench_scoring [--quick] [--songs 384546] [--listens 10000000]

Data: synthetic listening with the Taste Profile's shape (``bench_train_itemcf.synthetic_listens``:
Zipf-like popularity, lognormal history lengths, median ≈ 30); itemcf is trained on it (top_m
200); the content model gets random unit 90-d vectors for the same songs (its cost does not
depend on the values). Users scored: held-out users of the same distribution, ``--batch_size``
at a time, k = 500. Results: ``benchmarks/results/scoring.json``.
"""
import argparse
import json
import pathlib
import time

import numpy as np
import scipy.sparse as sp

from benchmarks.bench_train_itemcf import synthetic_listens
from benchmarks.machine import loadavg, machine_info
from recommend.models import itemcf_similarity
from recommend.models.content import ContentModel
from recommend.models.itemcf import ItemCFModel

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "scoring.json"


def build_models(num_songs: int, listens: int, top_m: int, seed: int):
    users, songs, num_users = synthetic_listens(listens, num_songs, seed)
    matrix = itemcf_similarity.listening_matrix(users, songs, num_users, num_songs)
    started = time.perf_counter()
    neighbours = itemcf_similarity.item_neighbours(matrix, top_m=top_m)
    train_seconds = time.perf_counter() - started
    song_ids = np.array([f"SO{i:016d}" for i in range(num_songs)], dtype=object)
    listeners = np.bincount(matrix.indices, minlength=num_songs)
    itemcf = ItemCFModel(song_ids, listeners, neighbours, top_m=top_m)
    vectors = np.random.default_rng(seed).normal(size=(num_songs, 90)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    content = ContentModel(song_ids, vectors)
    return itemcf, content, train_seconds, int(neighbours.nnz)


def held_out_histories(num_songs: int, users: int, seed: int) -> list[np.ndarray]:
    rows, songs, _ = synthetic_listens(users * 45, num_songs, seed + 1000)
    matrix = sp.csr_matrix((np.ones(len(rows)), (rows, songs)), shape=(rows.max() + 1, num_songs))
    return [np.sort(matrix.indices[matrix.indptr[u]:matrix.indptr[u + 1]]).astype(np.int64)
            for u in range(min(users, matrix.shape[0]))]


def bench(args) -> dict:
    itemcf, content, train_seconds, neighbours = build_models(args.songs, args.listens,
                                                              args.top_m, args.seed)
    histories = [h for h in held_out_histories(args.songs, args.users, args.seed) if len(h)]
    counts = [np.ones(len(h), np.int64) for h in histories]
    models = {"itemcf": itemcf, "content": content}
    # Warm up (TF graph tracing, caches), then interleave the models batch by batch.
    for model in models.values():
        model.recommend(histories[:args.batch_size], counts[:args.batch_size], args.k)
    seconds = {name: 0.0 for name in models}
    filled = 0
    for start in range(0, len(histories), args.batch_size):
        batch = histories[start:start + args.batch_size]
        batch_counts = counts[start:start + args.batch_size]
        for name, model in models.items():
            began = time.perf_counter()
            result = model.recommend(batch, batch_counts, args.k)
            seconds[name] += time.perf_counter() - began
            if name == "itemcf":
                filled += int((result.filled > 0).sum())
    users = len(histories)
    return {
        "songs": args.songs, "training_listens": args.listens, "top_m": args.top_m,
        "neighbours": neighbours, "itemcf_train_seconds": round(train_seconds, 1),
        "users_scored": users, "k": args.k, "batch_size": args.batch_size,
        "median_history": float(np.median([len(h) for h in histories])),
        "itemcf_users_with_popularity_fill": filled,
        "users_per_second": {name: round(users / s, 1) for name, s in seconds.items()},
        "itemcf_over_content_time": round(seconds["itemcf"] / seconds["content"], 3),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--songs", type=int, default=384_546)
    parser.add_argument("--listens", type=int, default=10_000_000,
                        help="training listens of the itemcf model")
    parser.add_argument("--users", type=int, default=20_000, help="users scored")
    parser.add_argument("--k", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--top_m", type=int, default=itemcf_similarity.DEFAULT_TOP_M)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="50,000 songs, 1M listens, 2,000 users (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.songs, args.listens, args.users = 50_000, 1_000_000, 2_000
    results = {"machine": machine_info(), "loadavg_start": loadavg(), "quick": args.quick}
    results.update(bench(args))
    results["loadavg_end"] = loadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
