"""Generate the cascade benchmark's questions: many kinds, known answers, a matching rule.

The one source of the benchmark's questions (bench/probe_value.py takes its facts from here).
Each kind belongs to a family — ``trivia``, ``arithmetic``, ``reasoning`` (one- or two-step word
problems), ``code`` (what a line of Python prints) and ``instruction`` (do exactly what is
asked) — and to ONE split: ``bench/data/cascade_calib.jsonl`` holds some kinds of every family
(to calibrate on), ``bench/data/cascade_heldout.jsonl`` the OTHER kinds (to report on: held-out
questions are of a kind never used to pick a signal or a threshold). Each line: ``{"id",
"kind", "question", "answer", "match"}`` (the rules of lkn/homeostat/answers.py). A fixed seed
makes the files reproducible.

    .venv/bin/python bench/cascade_questions.py [--per-kind 10] [--seed 13]
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

FRUITS = ["apple", "banana", "orange", "mango", "pear", "grape", "cherry", "peach", "plum",
          "kiwi", "lemon", "strawberry", "pineapple", "watermelon"]
NOT_FRUITS = ["carrot", "potato", "onion", "cabbage", "spinach", "chair", "hammer", "car",
              "dog", "bread", "cheese", "rock", "shoe", "pencil"]
NAMES = ["Tom", "Anna", "Ben", "Maria", "Sam", "Lucy", "Omar", "Mia", "Leo", "Sara", "Jack",
         "Nina"]
THINGS = ["apples", "books", "stickers", "pencils", "marbles", "cards", "balloons", "shells"]
PRICED = {"pencil": "pencils", "apple": "apples", "notebook": "notebooks", "ticket": "tickets",
          "cupcake": "cupcakes", "toy car": "toy cars"}

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


def fruit(rng: random.Random) -> Item:
    item = rng.choice(FRUITS + NOT_FRUITS)
    return {"question": f"Is a {item} a fruit? Answer yes or no.",
            "answer": "yes" if item in FRUITS else "no", "match": "yesno"}


# ------------------------------------------------------------ reasoning: short word problems

def buy_more(rng: random.Random) -> Item:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(2, 15), rng.randint(2, 15)
    return {"question": f"{name} has {a} {thing} and buys {b} more. How many {thing} does "
            f"{name} have now? Answer with the number only.", "answer": str(a + b),
            "match": "number"}


def cost(rng: random.Random) -> Item:
    one = rng.choice(sorted(PRICED))
    price, n = rng.randint(2, 9), rng.randint(2, 6)
    return {"question": f"One {one} costs {price} dollars. How many dollars do {n} "
            f"{PRICED[one]} cost? Answer with the number only.", "answer": str(price * n),
            "match": "number"}


def older(rng: random.Random) -> Item:
    name = rng.choice(NAMES)
    a, b = rng.randint(3, 40), rng.randint(2, 9)
    return {"question": f"{name} is {a} years old. {name}'s cousin is {b} years older. How old "
            f"is the cousin? Answer with the number only.", "answer": str(a + b),
            "match": "number"}


def eat_left(rng: random.Random) -> Item:
    name = rng.choice(NAMES)
    a = rng.randint(6, 20)
    b = rng.randint(1, a - 2)
    return {"question": f"{name} has {a} cookies and eats {b} of them. How many cookies are "
            f"left? Answer with the number only.", "answer": str(a - b), "match": "number"}


def two_step(rng: random.Random) -> Item:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(3, 12), rng.randint(2, 9)
    c = rng.randint(1, a + b - 1)
    return {"question": f"{name} has {a} {thing}, gets {b} more and then gives {c} away. How "
            f"many {thing} does {name} have now? Answer with the number only.",
            "answer": str(a + b - c), "match": "number"}


def taller(rng: random.Random) -> Item:
    a, b, c = rng.sample(NAMES, 3)
    which = rng.choice(["tallest", "shortest"])
    return {"question": f"{a} is taller than {b}. {b} is taller than {c}. Who is the {which}? "
            f"Answer with the name only.", "answer": a if which == "tallest" else c,
            "match": "contains"}


# ------------------------------------------------------------ code: what does Python say

def len_str(rng: random.Random) -> Item:
    word = rng.choice(WORDS)
    return {"question": f"What does this Python code print? print(len('{word}')) Answer with "
            f"the output only.", "answer": str(len(word)), "match": "number"}


def floordiv(rng: random.Random) -> Item:
    a, b = rng.randint(7, 60), rng.randint(2, 9)
    return {"question": f"In Python, what is {a} // {b}? Answer with the number only.",
            "answer": str(a // b), "match": "number"}


def augassign(rng: random.Random) -> Item:
    a, b = rng.randint(1, 20), rng.randint(1, 9)
    op = rng.choice(["+=", "-=", "*="])
    value = {"+=": a + b, "-=": a - b, "*=": a * b}[op]
    return {"question": f"What is the value of x after this Python code runs? x = {a}; "
            f"x {op} {b} Answer with the number only.", "answer": str(value), "match": "number"}


def bool_cmp(rng: random.Random) -> Item:
    a, b = rng.sample(range(1, 30), 2)
    op = rng.choice([">", "<"])
    value = a > b if op == ">" else a < b
    return {"question": f"What does this Python code print? print({a} {op} {b}) Answer with the "
            f"output only.", "answer": str(value), "match": "contains"}


def modulo(rng: random.Random) -> Item:
    a, b = rng.randint(7, 60), rng.randint(2, 9)
    return {"question": f"In Python, what is {a} % {b}? Answer with the number only.",
            "answer": str(a % b), "match": "number"}


def list_index(rng: random.Random) -> Item:
    xs = rng.sample(range(1, 50), 4)
    i = rng.randrange(4)
    return {"question": f"What does this Python code print? xs = {xs}; print(xs[{i}]) Answer "
            f"with the output only.", "answer": str(xs[i]), "match": "number"}


def max_list(rng: random.Random) -> Item:
    xs = rng.sample(range(1, 100), 4)
    return {"question": f"What does this Python code print? print(max({xs})) Answer with the "
            f"output only.", "answer": str(max(xs)), "match": "number"}


def concat(rng: random.Random) -> Item:
    a, b = rng.sample(["ab", "cd", "xy", "no", "up", "go", "hi", "mo"], 2)
    return {"question": f"What does this Python code print? print('{a}' + '{b}') Answer with "
            f"the output only.", "answer": a + b, "match": "contains"}


# ------------------------------------------------------------ instruction following

def reply_word(rng: random.Random) -> Item:
    word = rng.choice(WORDS).upper()
    return {"question": f"Reply with only the word {word} in capital letters.", "answer": word,
            "match": "exact"}


def first_letter(rng: random.Random) -> Item:
    word = rng.choice(WORDS)
    return {"question": f"What is the first letter of the word '{word}'? Answer with the letter "
            f"only.", "answer": word[0], "match": "exact"}


def backwards(rng: random.Random) -> Item:
    word = rng.choice([w for w in WORDS if len(w) <= 6])
    return {"question": f"Write the word '{word}' backwards. Answer with the word only.",
            "answer": word[::-1], "match": "exact"}


def last_letter(rng: random.Random) -> Item:
    word = rng.choice(WORDS)
    return {"question": f"What is the last letter of the word '{word}'? Answer with the letter "
            f"only.", "answer": word[-1], "match": "exact"}


Make = Callable[[random.Random], Item]
# kind -> (family, generator, split). The split is BY KIND: every family has kinds in both
# splits, and no kind is in both, so the held-out split asks questions of kinds never seen
# while calibrating. "bigger" keeps CASCADE_ANIMALS's order (its questions depend on it).
KINDS: dict[str, tuple[str, Make, str]] = {
    "capital": ("trivia", capital, "calib"), "legs": ("trivia", legs, "calib"),
    "next_day": ("trivia", next_day, "calib"),
    "opposite": ("trivia", opposite, "heldout"), "bigger": ("trivia", bigger, "heldout"),
    "next_month": ("trivia", next_month, "heldout"), "prev_day": ("trivia", prev_day, "heldout"),
    "fruit": ("trivia", fruit, "heldout"),
    "sum": ("arithmetic", small_sum, "calib"), "larger": ("arithmetic", larger, "calib"),
    "letters": ("arithmetic", letters, "calib"),
    "product": ("arithmetic", product, "heldout"),
    "difference": ("arithmetic", difference, "heldout"), "even": ("arithmetic", even, "heldout"),
    "buy_more": ("reasoning", buy_more, "calib"), "cost": ("reasoning", cost, "calib"),
    "older": ("reasoning", older, "calib"),
    "eat_left": ("reasoning", eat_left, "heldout"), "two_step": ("reasoning", two_step, "heldout"),
    "taller": ("reasoning", taller, "heldout"),
    "len_str": ("code", len_str, "calib"), "floordiv": ("code", floordiv, "calib"),
    "augassign": ("code", augassign, "calib"), "bool_cmp": ("code", bool_cmp, "calib"),
    "modulo": ("code", modulo, "heldout"), "list_index": ("code", list_index, "heldout"),
    "max_list": ("code", max_list, "heldout"), "concat": ("code", concat, "heldout"),
    "reply_word": ("instruction", reply_word, "calib"),
    "first_letter": ("instruction", first_letter, "calib"),
    "backwards": ("instruction", backwards, "heldout"),
    "last_letter": ("instruction", last_letter, "heldout"),
}


def family(kind: str) -> str:
    return KINDS[kind][0]


def generate(per_kind: int, seed: int) -> tuple[list[Item], list[Item]]:
    """Up to ``per_kind`` distinct questions of each kind (fewer where a kind has fewer), in
    the split its kind belongs to."""
    rng = random.Random(seed)
    splits: dict[str, list[Item]] = {"calib": [], "heldout": []}
    for kind, (_, make, split) in KINDS.items():
        seen: dict[str, Item] = {}
        for _ in range(per_kind * 50):
            if len(seen) == per_kind:
                break
            item = make(rng)
            seen.setdefault(item["question"], {"kind": kind, **item})
        splits[split] += seen.values()
    for name, items in splits.items():
        rng.shuffle(items)
        for i, item in enumerate(items):
            item["id"] = f"{name[0]}{i:03d}"
    return splits["calib"], splits["heldout"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-kind", type=int, default=10)
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
        kinds = sorted({item["kind"] for item in items}, key=lambda k: (family(k), k))
        print(f"{name}: {len(items)} questions, {len(kinds)} kinds: " + ", ".join(
            f"{k} ({sum(item['kind'] == k for item in items)})" for k in kinds))


if __name__ == "__main__":
    main()
