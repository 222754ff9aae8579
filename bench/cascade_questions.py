"""Generate the cascade benchmark's questions: several kinds, known answers, a matching rule.

Writes ``bench/data/cascade_calib.jsonl`` (to calibrate on) and ``bench/data/cascade_heldout.jsonl``
(to report on; never used to pick a signal or a threshold). Each line: ``{"id", "kind",
"question", "answer", "match"}`` (see lkn/answers.py for the rules). The split is stratified by
kind, from a fixed seed, so the files are reproducible.

    .venv/bin/python bench/cascade_questions.py [--per-kind 40] [--seed 13]
"""
from __future__ import annotations

import argparse
import json
import os
import random
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow",
    "Egypt": "Cairo", "Greece": "Athens", "Austria": "Vienna", "Norway": "Oslo",
    "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw",
    "Ireland": "Dublin", "Hungary": "Budapest", "Canada": "Ottawa", "Australia": "Canberra",
    "Brazil": ["Brasilia", "Brasília"], "Argentina": "Buenos Aires", "Mexico": "Mexico City",
    "Peru": "Lima", "Chile": "Santiago", "Colombia": ["Bogota", "Bogotá"],
    "India": ["New Delhi", "Delhi"], "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "Indonesia": "Jakarta", "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad",
    "Kenya": "Nairobi", "Nigeria": "Abuja", "Morocco": "Rabat", "South Korea": "Seoul",
    "the Philippines": "Manila", "Belgium": "Brussels", "the Netherlands": "Amsterdam",
    "Switzerland": "Bern", "Czechia": "Prague", "Romania": "Bucharest",
    "Ukraine": ["Kyiv", "Kiev"], "Cuba": "Havana", "New Zealand": "Wellington",
    "Pakistan": "Islamabad", "Saudi Arabia": "Riyadh", "Ethiopia": "Addis Ababa",
    "Venezuela": "Caracas", "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb",
    "Iceland": "Reykjavik", "Ghana": "Accra", "Senegal": "Dakar", "Jordan": "Amman",
    "Syria": "Damascus", "Lebanon": "Beirut", "Nepal": "Kathmandu",
}
# Sizes (arbitrary units) of the animals both question sets compare; cascade's "bigger"
# questions use the first fifteen of them in this order (its held-out split depends on it).
SIZES = {"mouse": 1, "rabbit": 3, "cat": 4, "dog": 6, "sheep": 10, "pig": 11, "human": 12,
         "cow": 20, "horse": 21, "bear": 19, "giraffe": 30, "elephant": 40, "whale": 60,
         "ant": 0, "bee": 0.5, "hamster": 1.5, "fox": 5, "wolf": 8, "lion": 15, "tiger": 16}
CASCADE_ANIMALS = ["mouse", "rabbit", "cat", "dog", "sheep", "human", "cow", "horse", "giraffe",
                   "elephant", "whale", "ant", "bee", "fox", "lion"]
LEGS = {"spider": 8, "dog": 4, "chicken": 2, "ant": 6, "cat": 4, "horse": 4, "duck": 2,
        "bee": 6, "octopus": 8, "human": 2, "cow": 4, "beetle": 6, "crab": 10, "snake": 0,
        "fish": 0, "penguin": 2, "elephant": 4, "butterfly": 6}
OPPOSITES = {"hot": "cold", "big": ["small", "little"], "up": "down", "fast": "slow",
             "happy": "sad", "light": ["dark", "heavy"], "open": ["closed", "close", "shut"],
             "wet": "dry", "old": ["young", "new"], "early": "late", "full": "empty",
             "high": "low", "left": "right", "strong": "weak", "rich": "poor", "long": "short",
             "hard": ["soft", "easy"], "true": "false", "win": "lose", "buy": "sell"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
WORDS = ["cat", "house", "apple", "river", "garden", "pencil", "window", "elephant", "sun",
         "computer", "banana", "orange", "table", "mountain", "dog", "book", "music", "tree",
         "chair", "planet", "bottle", "flower", "island", "guitar", "kitchen", "rocket"]

Item = dict[str, Any]


def capital(rng: random.Random) -> Item:
    country = rng.choice(sorted(CAPITALS))
    return {"question": f"What is the capital of {country}? Answer with the name of the city "
            f"only.", "answer": CAPITALS[country], "match": "contains"}


def larger(rng: random.Random) -> Item:
    a, b = rng.sample(range(2, 100), 2)
    return {"question": f"Which number is larger, {a} or {b}? Answer with the number only.",
            "answer": str(max(a, b)), "match": "number"}


def small_sum(rng: random.Random) -> Item:
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    return {"question": f"What is {a} + {b}? Answer with the number only.",
            "answer": str(a + b), "match": "number"}


def product(rng: random.Random) -> Item:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return {"question": f"What is {a} times {b}? Answer with the number only.",
            "answer": str(a * b), "match": "number"}


def letters(rng: random.Random) -> Item:
    word = rng.choice(WORDS)
    return {"question": f"How many letters are in the word \"{word}\"? Answer with the number "
            f"only.", "answer": str(len(word)), "match": "number"}


def bigger(rng: random.Random) -> Item:
    a, b = rng.sample(CASCADE_ANIMALS, 2)
    while SIZES[a] == SIZES[b]:
        a, b = rng.sample(CASCADE_ANIMALS, 2)
    return {"question": f"Is a {a} bigger than a {b}? Answer yes or no.",
            "answer": "yes" if SIZES[a] > SIZES[b] else "no", "match": "yesno"}


def legs(rng: random.Random) -> Item:
    animal = rng.choice(sorted(LEGS))
    return {"question": f"How many legs does a {animal} have? Answer with the number only.",
            "answer": str(LEGS[animal]), "match": "number"}


def opposite(rng: random.Random) -> Item:
    word = rng.choice(sorted(OPPOSITES))
    return {"question": f"What is the opposite of \"{word}\"? Answer with one word.",
            "answer": OPPOSITES[word], "match": "contains"}


def next_day(rng: random.Random) -> Item:
    i = rng.randrange(7)
    return {"question": f"Which day of the week comes after {DAYS[i]}? Answer with the day "
            f"only.", "answer": DAYS[(i + 1) % 7], "match": "contains"}


def prev_day(rng: random.Random) -> Item:
    i = rng.randrange(7)
    return {"question": f"Which day of the week comes before {DAYS[i]}? Answer with the day "
            f"only.", "answer": DAYS[(i - 1) % 7], "match": "contains"}


def difference(rng: random.Random) -> Item:
    a = rng.randint(5, 30)
    b = rng.randint(1, a - 1)
    return {"question": f"What is {a} - {b}? Answer with the number only.",
            "answer": str(a - b), "match": "number"}


def even(rng: random.Random) -> Item:
    n = rng.randint(1, 99)
    return {"question": f"Is {n} an even number? Answer yes or no.",
            "answer": "yes" if n % 2 == 0 else "no", "match": "yesno"}


def next_month(rng: random.Random) -> Item:
    i = rng.randrange(12)
    return {"question": f"Which month comes after {MONTHS[i]}? Answer with the month only.",
            "answer": MONTHS[(i + 1) % 12], "match": "contains"}


KINDS: dict[str, Callable[[random.Random], Item]] = {
    "capital": capital, "larger": larger, "sum": small_sum, "product": product,
    "letters": letters, "bigger": bigger, "legs": legs, "opposite": opposite,
    "next_day": next_day, "prev_day": prev_day, "next_month": next_month,
    "difference": difference, "even": even,
}


def generate(per_kind: int, seed: int) -> tuple[list[Item], list[Item]]:
    """``per_kind`` distinct questions of each kind, half to calibration, half held out."""
    rng = random.Random(seed)
    calib: list[Item] = []
    heldout: list[Item] = []
    for kind, make in KINDS.items():
        seen: dict[str, Item] = {}
        for _ in range(per_kind * 50):
            if len(seen) == per_kind:
                break
            item = make(rng)
            seen.setdefault(item["question"], {"kind": kind, **item})
        items = list(seen.values())
        rng.shuffle(items)
        half = len(items) // 2
        calib += items[:half]
        heldout += items[half:]
    for split, name in ((calib, "c"), (heldout, "h")):
        rng.shuffle(split)
        for i, item in enumerate(split):
            item["id"] = f"{name}{i:03d}"
    return calib, heldout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-kind", type=int, default=40)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--out", default=os.path.join(HERE, "data"))
    args = ap.parse_args()
    calib, heldout = generate(args.per_kind, args.seed)
    os.makedirs(args.out, exist_ok=True)
    for items, name in ((calib, "cascade_calib.jsonl"), (heldout, "cascade_heldout.jsonl")):
        with open(os.path.join(args.out, name), "w") as f:
            for item in items:
                f.write(json.dumps({"id": item["id"], **{k: v for k, v in item.items()
                                                          if k != "id"}}) + "\n")
        print(f"{name}: {len(items)} questions")


if __name__ == "__main__":
    main()
