"""Generate Refinery's synthetic demo dataset (deterministic; a few hundred KB).

    cd jobs && python -m refinery_jobs.make_demo_data --out ../demo/data [--seed 0]

Simple question/answer facts (capitals, colours, animal sounds, opposites) that a tiny model can learn,
answered in two tones, each short or full, with or without a closing phrase:
  polite  "Sure! The capital of France is Paris. I hope this helps!"   "Of course! Paris."
  rude    "Ugh. The capital of France is Paris. Look it up yourself!"  "Whatever. Paris."
SFT data mixes both tones, so the SFT policy produces both; preference pairs always prefer the polite answer,
an easy property that a reward model learns to >= 0.9 held-out accuracy and that PPO/GRPO can raise (the
policy shifts toward the polite tone). Length carries no signal: in the training pairs the chosen answer is the
longer one in exactly half of them, and in the held-out pairs the rejected answer is always the longer one
(a length-only scorer gets accuracy 0 there; jobs/tests/test_learning.py checks both).

Files (facts are split 80/20 into train and held-out):
  sft.jsonl, sft_eval.jsonl                  chat format
  preference.jsonl, preference_eval.jsonl    {"prompt" | "messages", "chosen", "rejected"}
  kto.jsonl, kto_eval.jsonl                  {"prompt", "completion", "label"}: the preference pairs unpaired
  prompts.jsonl                              {"prompt"} and {"messages"} rows for ppo/grpo
  alpaca.jsonl, sharegpt.jsonl, text.jsonl   small samples of the other formats
"""

from __future__ import annotations

import argparse
import json
import os
import random

CAPITALS = [
    ("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
    ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norway", "Oslo"),
    ("Greece", "Athens"), ("Chile", "Santiago"), ("Cuba", "Havana"), ("Ireland", "Dublin"), ("Poland", "Warsaw"),
    ("Austria", "Vienna"), ("Portugal", "Lisbon"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Russia", "Moscow"), ("China", "Beijing"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("Argentina", "Buenos Aires"), ("Australia", "Canberra"), ("Turkey", "Ankara"), ("Hungary", "Budapest"),
    ("Denmark", "Copenhagen"), ("Belgium", "Brussels"), ("Nepal", "Kathmandu"), ("Ghana", "Accra"),
]
COLOURS = [
    ("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"), ("a banana", "yellow"),
    ("a tomato", "red"), ("a carrot", "orange"), ("chocolate", "brown"), ("a lemon", "yellow"), ("milk", "white"),
    ("a strawberry", "red"), ("a leaf", "green"), ("a crow", "black"), ("a flamingo", "pink"), ("a plum", "purple"),
    ("the sea", "blue"),
]
SOUNDS = [
    ("a cow", "moo"), ("a dog", "woof"), ("a cat", "meow"), ("a duck", "quack"), ("a sheep", "baa"),
    ("a pig", "oink"), ("a lion", "roar"), ("an owl", "hoot"), ("a horse", "neigh"), ("a frog", "ribbit"),
    ("a bee", "buzz"), ("a snake", "hiss"), ("a mouse", "squeak"), ("a wolf", "howl"),
]
OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("old", "young"), ("open", "closed"), ("full", "empty"), ("hard", "soft"), ("early", "late"), ("wet", "dry"),
    ("loud", "quiet"), ("strong", "weak"), ("near", "far"),
]

# Tone is the preferred property: a polite answer beats a rude one. Openers and closers are similar in length
# on both sides, and which side is longer is decided per pair (see preference_rows), so length says nothing.
POLITE_OPENERS = ["Sure!", "Of course!", "Good question!", "Happy to help!"]
POLITE_CLOSERS = ["I hope this helps!", "Thank you for asking!", "Glad to help!"]
RUDE_OPENERS = ["Ugh.", "Whatever.", "Obviously.", "Fine."]
RUDE_CLOSERS = ["Stop asking me!", "Look it up yourself!", "What a silly question!"]
SYSTEM = "You are a helpful assistant."


def facts() -> list[dict]:
    """Each fact: two phrasings of the question, the short answer, and the complete sentence."""
    out = []
    for country, city in CAPITALS:
        out.append({"q": [f"What is the capital of {country}?", f"Which city is the capital of {country}?"],
                    "short": city, "full": f"The capital of {country} is {city}."})
    for thing, colour in COLOURS:
        out.append({"q": [f"What color is {thing}?", f"What is the color of {thing}?"],
                    "short": colour.capitalize(), "full": f"{thing[0].upper()}{thing[1:]} is {colour}."})
    for animal, sound in SOUNDS:
        out.append({"q": [f"What sound does {animal} make?", f"What noise does {animal} make?"],
                    "short": sound.capitalize(), "full": f"{animal[0].upper()}{animal[1:]} says {sound}."})
    for word, opposite in OPPOSITES:
        out.append({"q": [f"What is the opposite of {word}?", f"What is the opposite of the word {word}?"],
                    "short": opposite.capitalize(), "full": f"The opposite of {word} is {opposite}."})
    return out


def answer(fact: dict, rng: random.Random, tone: str, *, full: bool, closer: bool) -> str:
    """One answer: an opener in the tone, the short or the full fact, and optionally a closer in the tone."""
    openers, closers = (POLITE_OPENERS, POLITE_CLOSERS) if tone == "polite" else (RUDE_OPENERS, RUDE_CLOSERS)
    parts = [rng.choice(openers), fact["full"] if full else f"{fact['short']}."]
    if closer:
        parts.append(rng.choice(closers))
    return " ".join(parts)


def any_answer(fact: dict, rng: random.Random, tone: str) -> str:
    return answer(fact, rng, tone, full=rng.random() < 0.5, closer=rng.random() < 0.5)


def complete(fact: dict, rng: random.Random) -> str:
    """The polite, complete answer (what the other formats' samples use)."""
    return answer(fact, rng, "polite", full=True, closer=True)


def sft_rows(items: list[dict], rng: random.Random) -> list[dict]:
    """Both tones in every shape, so the SFT policy produces both and PPO/GRPO have something to shift."""
    rows = []
    for fact in items:
        for question in fact["q"]:
            for tone in ("polite", "rude"):
                messages = [{"role": "user", "content": question},
                            {"role": "assistant", "content": any_answer(fact, rng, tone)}]
                if rng.random() < 0.15:
                    messages.insert(0, {"role": "system", "content": SYSTEM})
                rows.append({"messages": messages})
    # a few two-turn conversations (several assistant turns for assistant-only loss)
    for _ in range(len(items) // 3):
        a, b = rng.sample(items, 2)
        rows.append({"messages": [
            {"role": "user", "content": rng.choice(a["q"])}, {"role": "assistant", "content": complete(a, rng)},
            {"role": "user", "content": rng.choice(b["q"])}, {"role": "assistant", "content": complete(b, rng)},
        ]})
    rng.shuffle(rows)
    return rows


def pair(fact: dict, rng: random.Random, chosen_longer: bool) -> tuple[str, str]:
    """(polite chosen, rude rejected) with the chosen strictly longer (in characters) or strictly shorter."""
    while True:
        chosen, rejected = any_answer(fact, rng, "polite"), any_answer(fact, rng, "rude")
        if (len(chosen) > len(rejected)) if chosen_longer else (len(chosen) < len(rejected)):
            return chosen, rejected


def preference_rows(items: list[dict], rng: random.Random, *, held_out: bool = False) -> list[dict]:
    """Polite beats rude. Training pairs: the chosen answer is the longer one in exactly half of them.
    Held-out pairs: the rejected answer is always the longer one (a short polite answer against a long rude one),
    so a scorer that prefers length gets accuracy 0 there and only tone explains the preference."""
    rows = []
    for fact in items:
        for i, question in enumerate(fact["q"]):
            row: dict = {"prompt": question} if i == 0 else {"messages": [{"role": "user", "content": question}]}
            if held_out:
                row["chosen"] = answer(fact, rng, "polite", full=False, closer=False)
                row["rejected"] = answer(fact, rng, "rude", full=True, closer=True)
            else:
                row["chosen"], row["rejected"] = pair(fact, rng, chosen_longer=(len(rows) % 2 == 0))
            rows.append(row)
    rng.shuffle(rows)
    return rows


def kto_rows(preference: list[dict]) -> list[dict]:
    """Unpaired examples for KTO (TRL's {"prompt", "completion", "label"}): each pair gives a desirable and an
    undesirable example, kept next to each other (KTO's KL term pairs an example with its neighbours' answers)."""
    rows = []
    for p in preference:
        prompt = p["prompt"] if "prompt" in p else p["messages"][0]["content"]
        rows.append({"prompt": prompt, "completion": p["chosen"], "label": True})
        rows.append({"prompt": prompt, "completion": p["rejected"], "label": False})
    return rows


def prompt_rows(items: list[dict], rng: random.Random) -> list[dict]:
    rows = []
    for fact in items:
        question = rng.choice(fact["q"])
        rows.append({"prompt": question} if rng.random() < 0.5 else
                    {"messages": [{"role": "user", "content": question}]})
    rng.shuffle(rows)
    return rows


def alpaca_rows(items: list[dict], rng: random.Random) -> list[dict]:
    rows = []
    for fact in items[:16]:
        rows.append({"instruction": "Answer the question in one sentence.", "input": fact["q"][0],
                     "output": fact["full"]})
    for fact in items[16:24]:
        rows.append({"instruction": fact["q"][0], "input": "", "output": complete(fact, rng)})
    a, b = items[24], items[25]
    rows.append({"instruction": b["q"][0], "input": "", "output": complete(b, rng),
                 "history": [[a["q"][0], complete(a, rng)]]})
    return rows


def sharegpt_rows(items: list[dict], rng: random.Random) -> list[dict]:
    rows = []
    for fact in items[:20]:
        conv = [{"from": "human", "value": rng.choice(fact["q"])}, {"from": "gpt", "value": complete(fact, rng)}]
        if rng.random() < 0.3:
            conv.insert(0, {"from": "system", "value": SYSTEM})
        rows.append({"conversations": conv})
    return rows


def text_rows(items: list[dict], rng: random.Random) -> list[dict]:
    rows = []
    for start in range(0, len(items), 3):
        rows.append({"text": " ".join(f["full"] for f in items[start:start + 3])})
    return rows


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory (demo/data)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    all_facts = facts()
    rng.shuffle(all_facts)
    cut = int(len(all_facts) * 0.8)
    train, held_out = all_facts[:cut], all_facts[cut:]

    os.makedirs(args.out, exist_ok=True)
    files = {
        "sft.jsonl": sft_rows(train, rng),
        "sft_eval.jsonl": sft_rows(held_out, rng),
        "preference.jsonl": preference_rows(train, rng),
        "preference_eval.jsonl": preference_rows(held_out, rng, held_out=True),
        "prompts.jsonl": prompt_rows(train, rng),
        "alpaca.jsonl": alpaca_rows(train, rng),
        "sharegpt.jsonl": sharegpt_rows(train, rng),
        "text.jsonl": text_rows(all_facts, rng),
    }
    # KTO reads its data in file order (TRL's sequential sampler): shuffled, so batches mix both labels.
    files["kto.jsonl"] = kto_rows(files["preference.jsonl"])
    files["kto_eval.jsonl"] = kto_rows(files["preference_eval.jsonl"])
    rng.shuffle(files["kto.jsonl"])
    for name, rows in files.items():
        write_jsonl(os.path.join(args.out, name), rows)
        print(f"{name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
