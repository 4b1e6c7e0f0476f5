#!/usr/bin/env python3
"""Where a model's ring PR-AUC is won and lost, from an evaluation's scores.csv.

Usage: ring_errors.py WORLD.jsonl REPORT_DIR/scores.csv [--top N]

WORLD.jsonl is the evaluated world written as JSON lines (`fraudgraph simulate
--transactions 200000 --seed S --out WORLD.jsonl`, the same seed as the .pb that was
evaluated); its labels give each fraud's typology, and so each ring's members and the
devices and IPs its payments came from. A ring payment is "from the pool" when its device
and its IP were each used for ring payments of more than one member, "camouflaged"
otherwise (the member's own phone and home IP). For both kinds and both models it prints
how many legitimate test transactions rank above a ring fraud on average (the fewer, the
higher the PR-AUC), then the N legitimate transactions the GNN scores highest, with what
their account has to do with fraud. Standard library only; read-only.
"""

import argparse
import bisect
import collections
import csv
import json


def read_world(path):
    """txn_id -> transaction, txn_id -> typology of every fraud."""
    txns, typology = {}, {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "transaction" in record:
                t = record["transaction"]
                txns[t["txn_id"]] = t
            elif record.get("label", {}).get("is_fraud"):
                typology[record["label"]["txn_id"]] = record["label"]["typology"]
    return txns, typology


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("world")
    parser.add_argument("scores")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    txns, typology = read_world(args.world)
    with open(args.scores) as f:
        rows = list(csv.DictReader(f))

    ring_txns = [txns[i] for i, ty in typology.items() if ty == "TYPOLOGY_RING"]
    members_of = collections.defaultdict(set)
    for t in ring_txns:
        for key in ("device_id", "ip"):
            if key in t:
                members_of[(key, t[key])].add(t["account_id"])
    fraud_kinds = collections.defaultdict(set)
    for i, ty in typology.items():
        fraud_kinds[txns[i]["account_id"]].add(ty)

    def from_pool(t):
        return all(len(members_of.get((k, t.get(k)), ())) > 1 for k in ("device_id", "ip"))

    ring = [r for r in rows if r["typology"] == "TYPOLOGY_RING"]
    legit = [r for r in rows if r["fraud"] == "0"]
    print(f"{len(ring)} ring frauds, {len(legit)} legitimate test transactions")
    for model in ("gnn", "gbdt"):
        ranked = sorted(float(r[model]) for r in legit)
        for kind, pool in (("from the pool", True), ("camouflaged", False)):
            chosen = [r for r in ring if from_pool(txns[r["txn_id"]]) == pool]
            above = [len(ranked) - bisect.bisect_right(ranked, float(r[model])) for r in chosen]
            mean = sum(above) / max(1, len(above))
            print(f"{model:4}  {kind:13}  {len(chosen):4} frauds  "
                  f"{mean:8.2f} legitimate ranked above on average")

    print(f"\nthe {args.top} legitimate transactions the GNN scores highest:")
    for r in sorted(legit, key=lambda r: -float(r["gnn"]))[: args.top]:
        t = txns[r["txn_id"]]
        kinds = ",".join(sorted(k.removeprefix("TYPOLOGY_").lower()
                                for k in fraud_kinds.get(t["account_id"], ()))) or "-"
        print(f"  gnn {float(r['gnn']):.4f}  gbdt {float(r['gbdt']):.4f}  "
              f"account's frauds: {kinds:24} mcc {t['mcc']}  "
              f"{t['channel'].removeprefix('CHANNEL_').lower()}")


if __name__ == "__main__":
    main()
