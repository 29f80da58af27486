"""The Hundred Acre Wood: a synthetic story corpus whose true entropy is known exactly.

Every story is a chain of random choices, and every sentence the grammar can produce
is enumerated up front (a few thousand strings). Because no two choice sequences give
the same text, the text's entropy equals the choices' entropy, which we can add up:

    H(story) = H(opening) + E[N] * (H(middle sentence) + H_b(p_stop)) + H(ending | opening)

and the entropy *rate* of an endless stream of stories is H(story) / E[characters per story]
bits per character. That is the floor a perfect model reaches, and every training plot
in the workbook draws it.

A story:

    On a happy day, Pooh had a red balloon. Pooh skipped to the river. "Hello, Piglet,"
    said Owl. Piglet went home to the beech tree. In the evening, Pooh hugged the red balloon.

The opening plants *long-range facts* (mood, hero, colour, object); the ending repeats
them. A model whose context window does not reach back to the opening pays exactly the
bits of the facts it cannot see, which gives a floor for every context length
(`HundredAcreWood.floor_vs_context`).
"""
from __future__ import annotations

import itertools
import math
import random
import re
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

# ----------------------------------------------------------------------------- the world
CHARACTERS = ["Pooh", "Piglet", "Eeyore", "Owl", "Rabbit", "Kanga", "Roo", "Tigger"]
HOMES = {  # where each character lives: 'went home' sentences are fully determined by who
    "Pooh": "honey tree", "Piglet": "beech tree", "Eeyore": "gloomy place", "Owl": "chestnuts",
    "Rabbit": "sandy bank", "Kanga": "pine trees", "Roo": "pine trees", "Tigger": "pine trees",
}
FAVOURITES = {  # static hierarchy data (world -> home -> character -> favourite thing)
    "Pooh": "honey pot", "Piglet": "balloon", "Eeyore": "drum", "Owl": "lantern",
    "Rabbit": "basket", "Kanga": "scarf", "Roo": "kite", "Tigger": "umbrella",
}
PLACES = ["river", "bridge", "meadow", "forest", "bog", "sandy pit", "big stones", "old oak"]
COLORS = ["red", "blue", "green", "yellow", "purple", "pink", "brown", "silver"]
OBJECTS = ["balloon", "honey pot", "kite", "umbrella", "basket", "drum", "scarf", "lantern"]
WALK_VERBS = ["walked", "ran", "skipped", "hopped", "wandered", "raced", "strolled", "bounced"]
GREETINGS = ["Hello", "Oh bother", "Good morning", "Hooray", "Oh dear", "Look", "Goodbye", "Hush"]
MOODS = ["happy", "sad", "sleepy"]
ENDING_VERBS = {"happy": ["hugged", "kissed"], "sad": ["lost", "dropped"], "sleepy": ["hid", "forgot"]}

CATEGORIES = {  # word -> category, for embedding plots and expert-routing analysis
    **{w: "character" for w in CHARACTERS}, **{w: "place" for w in PLACES},
    **{w: "home" for w in set(HOMES.values())}, **{w: "color" for w in COLORS},
    **{w: "object" for w in OBJECTS}, **{w: "walk verb" for w in WALK_VERBS},
    **{w: "greeting" for w in GREETINGS}, **{w: "mood" for w in MOODS},
    **{w: "ending verb" for vs in ENDING_VERBS.values() for w in vs},
}

P_CONTINUE = 0.75  # after each middle sentence: another one (p) or the ending (1 - p)
MIDDLE_TEMPLATES = ["walk", "say", "meet", "home"]  # chosen uniformly


def _bits(p: float) -> float:
    return -math.log2(p)


def _h_bernoulli(p: float) -> float:
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


@dataclass(frozen=True)
class Sentence:
    text: str
    kind: str          # opening | walk | say | meet | home | ending
    prob: float        # probability of this exact sentence given what determines it
    fields: tuple      # the choices, e.g. (("hero", "Pooh"), ("color", "red"))

    def get(self, name: str) -> str:
        return dict(self.fields)[name]


def _enumerate_openings() -> list[Sentence]:
    p = 1 / (len(MOODS) * len(CHARACTERS) * len(COLORS) * len(OBJECTS))
    return [Sentence(f"On a {m} day, {c} had a {col} {o}.", "opening", p,
                     (("mood", m), ("hero", c), ("color", col), ("object", o)))
            for m in MOODS for c in CHARACTERS for col in COLORS for o in OBJECTS]


def _enumerate_middles() -> list[Sentence]:
    t = 1 / len(MIDDLE_TEMPLATES)
    n, out = len(CHARACTERS), []
    for c in CHARACTERS:
        for v in WALK_VERBS:
            for pl in PLACES:
                out.append(Sentence(f"{c} {v} to the {pl}.", "walk", t / (n * len(WALK_VERBS) * len(PLACES)),
                                    (("who", c), ("verb", v), ("place", pl))))
    for g in GREETINGS:  # the person greeted is named first, the speaker is someone else
        for c2 in CHARACTERS:
            for c1 in CHARACTERS:
                if c1 != c2:
                    out.append(Sentence(f'"{g}, {c2}," said {c1}.', "say", t / (len(GREETINGS) * n * (n - 1)),
                                        (("greeting", g), ("to", c2), ("who", c1))))
    for c1 in CHARACTERS:
        for c2 in CHARACTERS:
            if c1 != c2:
                for pl in PLACES:
                    out.append(Sentence(f"{c1} met {c2} near the {pl}.", "meet", t / (n * (n - 1) * len(PLACES)),
                                        (("who", c1), ("to", c2), ("place", pl))))
    for c in CHARACTERS:
        out.append(Sentence(f"{c} went home to the {HOMES[c]}.", "home", t / n, (("who", c),)))
    return out


def _ending_options(opening: Sentence) -> list[Sentence]:
    m, c, col, o = (opening.get(k) for k in ("mood", "hero", "color", "object"))
    verbs = ENDING_VERBS[m]
    return [Sentence(f"In the evening, {c} {v} the {col} {o}.", "ending", 1 / len(verbs),
                     (("mood", m), ("hero", c), ("color", col), ("object", o), ("verb", v)))
            for v in verbs]


@dataclass
class Story:
    opening: Sentence
    middle: list[Sentence]
    ending: Sentence
    text: str = field(init=False)

    def __post_init__(self):
        self.text = " ".join(s.text for s in self.sentences) + "\n"

    @property
    def sentences(self) -> list[Sentence]:
        return [self.opening, *self.middle, self.ending]

    @property
    def mood(self) -> str:
        return self.opening.get("mood")

    def log2_prob(self) -> float:
        """log2 p(story): the sum of every choice's probability."""
        lp = math.log2(self.opening.prob)
        for s in self.middle:
            lp += math.log2(s.prob)
        lp += (len(self.middle) - 1) * math.log2(P_CONTINUE) + math.log2(1 - P_CONTINUE)
        return lp + math.log2(self.ending.prob)


_SPLIT = re.compile(r"(?<=\.)\s+")


class HundredAcreWood:
    """Sample stories, check text, and know the exact entropy of it all."""

    def __init__(self):
        self.openings = _enumerate_openings()
        self.middles = _enumerate_middles()
        self._middle_p = np.array([s.prob for s in self.middles])
        self.endings = [e for o in self.openings for e in _ending_options(o)]
        self.by_text = {}
        for s in [*self.openings, *self.middles, *self.endings]:
            if self.by_text.setdefault(s.text, s) is not s:  # pragma: no cover - a grammar bug
                raise AssertionError(f"ambiguous grammar: {s.text!r} generated twice")

    # ---------------------------------------------------------------- sampling
    def story(self, rng: random.Random) -> Story:
        opening = rng.choice(self.openings)
        middle = [self._middle(rng)]
        while rng.random() < P_CONTINUE:
            middle.append(self._middle(rng))
        return Story(opening, middle, rng.choice(_ending_options(opening)))

    def _middle(self, rng: random.Random) -> Sentence:
        kind = rng.choice(MIDDLE_TEMPLATES)  # two-stage draw == the enumerated probabilities
        c = rng.choice(CHARACTERS)
        others = [x for x in CHARACTERS if x != c]
        if kind == "walk":
            text = f"{c} {rng.choice(WALK_VERBS)} to the {rng.choice(PLACES)}."
        elif kind == "say":
            text = f'"{rng.choice(GREETINGS)}, {c}," said {rng.choice(others)}.'
        elif kind == "meet":
            text = f"{c} met {rng.choice(others)} near the {rng.choice(PLACES)}."
        else:
            text = f"{c} went home to the {HOMES[c]}."
        return self.by_text[text]

    def stories(self, n: int, seed: int = 0) -> list[Story]:
        rng = random.Random(seed)
        return [self.story(rng) for _ in range(n)]

    def text(self, n_chars: int, seed: int = 0) -> str:
        """At least `n_chars` characters of whole stories."""
        rng, parts, total = random.Random(seed), [], 0
        while total < n_chars:
            t = self.story(rng).text
            parts.append(t)
            total += len(t)
        return "".join(parts)

    # ---------------------------------------------------------------- exact entropy
    @cached_property
    def _moments(self) -> dict:
        def h_and_len(options):  # expected bits and characters of one draw from `options`
            p = np.array([s.prob for s in options])
            assert abs(p.sum() - 1) < 1e-9
            return float(-(p * np.log2(p)).sum()), float((p * np.array([len(s.text) for s in options])).sum())

        h_open, len_open = h_and_len(self.openings)
        h_mid, len_mid = h_and_len(self.middles)
        # the ending is determined by the opening except for its verb; its length averages over openings
        h_end = float(np.mean([h_and_len(_ending_options(o))[0] for o in self.openings]))
        len_end = float(np.mean([h_and_len(_ending_options(o))[1] for o in self.openings]))
        e_n = 1 / (1 - P_CONTINUE)  # N = 1 + Geometric: mean 1/(1-p)
        bits = h_open + e_n * (h_mid + _h_bernoulli(P_CONTINUE)) + h_end
        # characters: the sentences, a space between each pair, and the closing newline
        chars = len_open + e_n * len_mid + len_end + (e_n + 1) + 1
        return {"bits_per_story": bits, "chars_per_story": chars, "mean_middle_sentences": e_n,
                "bits_opening": h_open, "bits_middle_sentence": h_mid, "bits_stop_decision": _h_bernoulli(P_CONTINUE),
                "bits_ending": h_end}

    def entropy(self) -> dict:
        """The exact entropy of the stream of stories (with a full-story context)."""
        m = dict(self._moments)
        m["bits_per_char"] = m["bits_per_story"] / m["chars_per_story"]
        m["nats_per_char"] = m["bits_per_char"] * math.log(2)
        return m

    def nats_per_token(self, tokens_per_story: float) -> float:
        """Floor per token for a tokenizer that makes `tokens_per_story` tokens on average
        (measure that with `tokens_per_story()`): the text's entropy is the same however it is cut."""
        return self.entropy()["bits_per_story"] * math.log(2) / tokens_per_story

    # long-range facts: (name, bits it carries, source field) -- the ending repeats them
    LONG_RANGE = (("mood -> ending verb", math.log2(6) - 1.0, "mood"), ("hero", 3.0, "hero"),
                  ("color", 3.0, "color"), ("object", 3.0, "object"))

    def floor_vs_context(self, contexts, n_stories: int = 20000, seed: int = 1) -> dict:
        """Floor (nats/char) for a model that sees only the previous `c` characters.

        A fact from the opening is lost when the distance from the end of its word in the
        opening to the start of the word it decides in the ending exceeds `c`; then its
        bits are paid again. Distances come from `n_stories` sampled stories (their
        distribution is what the grammar implies; 20k samples pin P(lost) to ~0.3%).
        It is a lower bound: below about one sentence (~45 chars) a model also loses track
        of where it is in the story, which this does not count."""
        ent = self.entropy()
        dists = {name: [] for name, _, _ in self.LONG_RANGE}
        for st in self.stories(n_stories, seed):
            text, end_start = st.text, len(st.text) - 1 - len(st.ending.text)
            o = st.opening
            for name, _, field_name in self.LONG_RANGE:
                word = o.get(field_name)
                src_end = text.index(word, 0) + len(word) if field_name != "mood" else len(f"On a {word}")
                if field_name == "mood":
                    tgt = end_start + len(f"In the evening, {o.get('hero')} ")
                elif field_name == "hero":
                    tgt = end_start + len("In the evening, ")
                else:
                    tgt = end_start + st.ending.text.index(f" {word}") + 1 if field_name == "color" else \
                        end_start + st.ending.text.rindex(word)
                dists[name].append(tgt - src_end)
        out = {"context": list(map(int, contexts)), "nats_per_char": [], "p_lost": {}}
        arrays = {k: np.array(v) for k, v in dists.items()}
        for name, _, _ in self.LONG_RANGE:
            out["p_lost"][name] = [float((arrays[name] > c).mean()) for c in contexts]
        for i in range(len(contexts)):
            extra = sum(bits * out["p_lost"][name][i] for name, bits, _ in self.LONG_RANGE)
            out["nats_per_char"].append((ent["bits_per_story"] + extra) * math.log(2) / ent["chars_per_story"])
        return out

    # ---------------------------------------------------------------- checking text
    def parse_story(self, text: str) -> Story | None:
        """The Story behind `text` (one story, with or without its newline), or None."""
        parts = _SPLIT.split(text.strip())
        if len(parts) < 3:
            return None
        sents = [self.by_text.get(p) for p in parts]
        if any(s is None for s in sents):
            return None
        o, mids, e = sents[0], sents[1:-1], sents[-1]
        if o.kind != "opening" or e.kind != "ending" or any(s.kind in ("opening", "ending") for s in mids):
            return None
        if e not in _ending_options(o):
            return None  # the ending contradicts the opening (wrong hero, colour, object or mood)
        return Story(o, mids, e)

    def check(self, text: str) -> dict:
        """Validity of (generated) text: the share of sentences the grammar can produce, and
        of complete stories that are consistent from opening to ending. A trailing
        unfinished story or sentence is ignored."""
        lines = text.split("\n")
        complete = lines[:-1] if not text.endswith("\n") else lines
        sentences = [p for line in lines for p in _SPLIT.split(line.strip()) if p]
        if sentences and not text.rstrip(" ").endswith((".", "\n")):
            sentences = sentences[:-1]  # cut off mid-sentence
        valid_s = sum(p in self.by_text for p in sentences)
        stories = [line for line in complete if line.strip()]
        valid_st = sum(self.parse_story(line) is not None for line in stories)
        return {"sentences": len(sentences), "valid_sentences": valid_s,
                "sentence_validity": valid_s / len(sentences) if sentences else 0.0,
                "stories": len(stories), "valid_stories": valid_st,
                "story_validity": valid_st / len(stories) if stories else 0.0}

    # ---------------------------------------------------------------- derived tasks
    def qa_pairs(self, story: Story) -> list[dict]:
        """Questions whose answers the story states (for supervised fine-tuning)."""
        o = story.opening
        hero, col, obj = o.get("hero"), o.get("color"), o.get("object")
        qa = [
            {"task": "color", "question": f"What color was the {obj} {hero} had?", "answer": col},
            {"task": "object", "question": f"What did {hero} have?", "answer": f"a {col} {obj}"},
            {"task": "hero", "question": f"Who had the {col} {obj}?", "answer": hero},
            {"task": "mood", "question": "What kind of day was it?", "answer": o.get("mood")},
            {"task": "count", "question": "How many sentences are in the middle of the story?",
             "answer": str(len(story.middle))},
        ]
        for s in story.middle:
            if s.kind == "walk":
                qa.append({"task": "where", "question": f"Where did {s.get('who')} go?", "answer": f"the {s.get('place')}"})
                break
        return qa

    def iter_instruction_examples(self, seed: int = 0):
        """Instruction-tuning examples without end: a task prefix, a story, and the expected
        response. Lazy, so a caller that filters stops drawing stories when it has enough."""
        rng = random.Random(seed)
        while True:
            st = self.story(rng)
            qa = rng.choice(self.qa_pairs(st))
            yield {"task": qa["task"], "story": st.text.strip(),
                   "prompt": f"Story: {st.text.strip()}\nQuestion: {qa['question']}\nAnswer:",
                   "response": f" {qa['answer']}"}

    def instruction_examples(self, n: int, seed: int = 0) -> list[dict]:
        """The first `n` of `iter_instruction_examples(seed)`."""
        return list(itertools.islice(self.iter_instruction_examples(seed), n))

    def iter_preference_pairs(self, n_examples: int, seed: int = 0):
        """(prompt, chosen, rejected): the true answer vs a plausible wrong one, for the examples
        among the first `n_examples` whose task has a pool of wrong answers. Lazy."""
        rng = random.Random(seed)
        pools = {"color": COLORS, "hero": CHARACTERS, "mood": MOODS, "count": [str(i) for i in range(1, 12)]}
        for ex in itertools.islice(self.iter_instruction_examples(seed), n_examples):
            if ex["task"] not in pools:
                continue
            truth = ex["response"].strip()
            wrong = rng.choice([w for w in pools[ex["task"]] if w != truth])
            yield {"task": ex["task"], "prompt": ex["prompt"], "chosen": f" {truth}", "rejected": f" {wrong}"}

    def preference_pairs(self, n: int, seed: int = 0) -> list[dict]:
        """Up to `n` preference pairs, drawn from the first 4n instruction examples."""
        return list(itertools.islice(self.iter_preference_pairs(4 * n, seed), n))

    @staticmethod
    def hierarchy() -> list[tuple[str, str]]:
        """(parent, child) edges: world -> homes -> characters -> favourite things."""
        edges = [("Hundred Acre Wood", home) for home in dict.fromkeys(HOMES.values())]
        edges += [(HOMES[c], c) for c in CHARACTERS]
        edges += [(c, FAVOURITES[c]) for c in CHARACTERS]
        return edges


def tokens_per_story(encode, stories: list[Story]) -> float:
    """Average token count of a story under `encode` (for the per-token floor)."""
    return float(np.mean([len(encode(s.text)) for s in stories]))


def english_text() -> str:
    """Natural English that ships with Python: the help topics of the standard library
    (`pydoc_data.topics`, ~465 KB), in a fixed order."""
    from pydoc_data import topics

    return "\n\n".join(topics.topics[k].strip() for k in sorted(topics.topics))
