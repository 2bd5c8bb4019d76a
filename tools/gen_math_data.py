#!/usr/bin/env python3
"""Writes examples/data/math-{train,test}.jsonl: arithmetic word problems for examples/grpo-math.yaml.

Deterministic (random.Random(seed) only, no clock, no hash order): the same seed writes the same
bytes on every machine. Each record is {"prompt", "response", "answer"}: the response is always
"<a><op><b>=<c> #### <c>" (one format for every SFT example, so what GRPO improves is the
arithmetic, not the answer format), the answer the number alone. Train and test share no prompt
(the split is over distinct prompts; the same sum can recur with another name or object).

usage: tools/gen_math_data.py [--seed 1] [--train 6000] [--test 256] [--out examples/data]
"""
import argparse
import json
import os
import random

NAMES = ["Tom", "Ann", "Sam", "Mia", "Ben", "Eva", "Max", "Zoe"]
OBJECTS = ["apples", "pens", "cards", "eggs", "books", "coins"]


def problems():
    """Every distinct problem, in a fixed order."""
    out = []
    for n in NAMES:
        for o in OBJECTS:
            for a in range(1, 13):
                for b in range(1, 13):
                    out.append((f"{n} had {a} {o}, got {b} more. How many now?", f"{a}+{b}", a + b))
            for a in range(5, 21):
                for b in range(1, a):
                    out.append((f"{n} had {a} {o}, gave {b} away. How many left?", f"{a}-{b}", a - b))
            for a in range(2, 10):
                for b in range(2, 6):
                    out.append((f"{n} got {a} bags of {b} {o}. How many {o}?", f"{a}*{b}", a * b))
    return out


def record(p):
    prompt, expr, c = p
    return {"prompt": prompt, "response": f"{expr}={c} #### {c}", "answer": str(c)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--test", type=int, default=256)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "data"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    ps = problems()
    if args.train + args.test > len(ps):
        raise SystemExit(f"only {len(ps)} distinct problems; asked for {args.train} + {args.test}")
    # Balanced operations: draw the same share of each kind, then shuffle.
    by_op = {op: [p for p in ps if op in p[1]] for op in "+-*"}
    for v in by_op.values():
        rng.shuffle(v)
    picked = []
    i = 0
    while len(picked) < args.train + args.test:
        for op in "+-*":
            if i < len(by_op[op]) and len(picked) < args.train + args.test:
                picked.append(by_op[op][i])
        i += 1
    rng.shuffle(picked)
    test, train = picked[:args.test], picked[args.test:]
    assert not {p[0] for p in test} & {p[0] for p in train}
    os.makedirs(args.out, exist_ok=True)
    for name, rows in (("math-train.jsonl", train), ("math-test.jsonl", test)):
        with open(os.path.join(args.out, name), "w", encoding="utf-8", newline="\n") as f:
            for p in rows:
                f.write(json.dumps(record(p), separators=(", ", ": ")) + "\n")
    print(f"wrote {len(train)} train and {len(test)} test problems to {os.path.normpath(args.out)}")


if __name__ == "__main__":
    main()
