"""demo_corpus.py - the built-in English of the demo: simple stories for
pretraining the tiny demo model, and two task datasets an adapter can learn.

Everything is generated from the word lists below with a seeded
random.Random, so the same seed gives the same text byte for byte.  Nothing
is downloaded.  Used by tests/tools/pretrain_demo.py.

Both tasks start from the same kind of prompt, one line that a story could
contain, and the answer follows it after a space:

    Tom the cat found three red balls in the garden.

  task1 (style):  a pirate's retelling
    Arr! Tom the cat be findin' three red balls in the garden, matey! Yo ho ho!
  task2 (format): the facts as one JSON object
    {"name": "Tom", "animal": "cat", "count": 3, "color": "red", "thing": "balls", "place": "garden"}

The pretraining documents contain such lines too, often followed by sentences
that repeat their facts (so the prompts are English the base model knows,
and it has learned to look back and copy); some stories have a pirate in
them, and one document in eight is a JSON record of facts, so the words and
the syntax of both answers are known.  But no document ever answers a story
line in either way: that is what the adapters learn.
"""

import random

NAMES = ["Tom", "Lily", "Max", "Anna", "Ben", "Sue", "Sam", "Mia", "Tim", "Lucy", "Jack", "Emma",
         "Leo", "Zoe", "Dan", "Amy", "Bob", "Kate", "Finn", "Ruby", "Ned", "Rosa", "Otto", "Ivy"]
SHE = {"Lily", "Anna", "Sue", "Mia", "Lucy", "Emma", "Zoe", "Amy", "Kate", "Ruby", "Rosa", "Ivy"}
ANIMALS = ["cat", "dog", "bird", "fox", "rabbit", "bear", "mouse", "duck", "frog", "pig", "owl",
           "horse", "goat", "lion", "sheep", "cow"]
COLORS = ["red", "blue", "green", "yellow", "pink", "brown", "white", "black", "orange", "purple"]
# singular, plural
THINGS = [("ball", "balls"), ("apple", "apples"), ("box", "boxes"), ("hat", "hats"),
          ("flower", "flowers"), ("stone", "stones"), ("cup", "cups"), ("book", "books"),
          ("kite", "kites"), ("shoe", "shoes"), ("leaf", "leaves"), ("egg", "eggs"),
          ("cake", "cakes"), ("toy", "toys"), ("shell", "shells"), ("key", "keys")]
PLACES = ["garden", "park", "forest", "house", "barn", "yard", "kitchen", "field", "river", "school",
          "shop", "hill", "lake", "farm", "beach", "town"]
COUNTS = [("one", 1), ("two", 2), ("three", 3), ("four", 4), ("five", 5), ("six", 6),
          ("seven", 7), ("eight", 8), ("nine", 9), ("ten", 10)]
ADJ = ["little", "big", "happy", "small", "kind", "brave", "funny", "shy", "old", "young", "clever",
       "sleepy"]
FEEL = ["happy", "sad", "scared", "excited", "tired", "angry", "surprised", "proud", "hungry"]
# (present, past)
ACTS = [("play", "played"), ("run", "ran"), ("jump", "jumped"), ("sing", "sang"),
        ("dance", "danced"), ("swim", "swam"), ("read", "read"), ("walk", "walked"),
        ("eat", "ate"), ("sleep", "slept"), ("draw", "drew"), ("climb", "climbed")]
WEATHER = ["sunny", "rainy", "windy", "cold", "warm", "cloudy", "snowy"]
TIMES = ["One day", "One morning", "Later that day", "The next day", "That evening", "Soon",
         "After lunch", "In the afternoon"]


def a_an(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def found_line(r, name=None, animal=None):
    """The shared prompt line: NAME the ANIMAL found COUNT COLOR THINGS in the PLACE."""
    name, animal = name or r.choice(NAMES), animal or r.choice(ANIMALS)
    color, place = r.choice(COLORS), r.choice(PLACES)
    cw, cn = r.choice(COUNTS)
    sing, plur = r.choice(THINGS)
    thing = sing if cn == 1 else plur
    line = f"{name} the {animal} found {cw} {color} {thing} in the {place}."
    return line, dict(name=name, animal=animal, count_word=cw, count=cn, color=color, thing=thing,
                      place=place)


def story(r):
    """One short story of 5 to 12 sentences."""
    name, friend = r.sample(NAMES, 2)
    animal, fanimal = r.choice(ANIMALS), r.choice(ANIMALS)
    adj = r.choice(ADJ)
    place = r.choice(PLACES)
    color = r.choice(COLORS)
    sing, plur = r.choice(THINGS)
    act, acted = r.choice(ACTS)
    he = "She" if name in SHE else "He"
    his = "His" if he == "He" else "Her"
    s = [r.choice([f"Once upon a time, there was {a_an(adj)} {animal} named {name}.",
                   f"{name} was {a_an(adj)} {animal} who lived near the {place}.",
                   f"There once was {a_an(adj)} {animal}. {his} name was {name}."])]
    s.append(r.choice([f"{name} liked to {act} in the {place}.",
                       f"Every day, {name} went to the {place} to {act}.",
                       f"{he} loved {color} {plur} more than anything."]))
    s.append(f"{r.choice(TIMES)}, it was {r.choice(WEATHER)}.")
    f = None
    if r.random() < 0.6:
        line, f = found_line(r, *((name, animal) if r.random() < 0.5 else (None, None)))
        s.append(line)
        # callbacks to the facts of that line: stories that repeat what came before
        # teach the model to look back and copy
        for _ in range(r.randrange(1, 3)):
            s.append(r.choice([
                f"{f['name']} took the {f['color']} {f['thing']} home.",
                f"\"I found {f['count_word']} {f['color']} {f['thing']}!\" said {f['name']}.",
                f"{f['name']} counted them: {f['count']} {f['thing']}.",
                f"The {f['thing']} in the {f['place']} were {f['color']}.",
                f"Everyone in the {f['place']} saw {f['name']} the {f['animal']}.",
                f"{f['name']} the {f['animal']} was {r.choice(FEEL)}."]))
    else:
        s.append(f"{name} saw {a_an(color)} {sing} near the {r.choice(PLACES)}.")
    feel = r.choice(FEEL)
    s.append(f"{name} was {feel}.")
    if f and r.random() < 0.7:
        # the line again, word for word: only looking back predicts it
        s.append(r.choice([f"{friend} said: \"{line}\"", f"Yes, {line}", f"It was true. {line}",
                           f"Everyone heard the news. {line}"]))
    if r.random() < 0.6:
        s.append(r.choice([f"\"Can I {act} with you?\" asked {friend} the {fanimal}.",
                           f"\"Look at the {sing}!\" said {name}.",
                           f"\"What is that?\" asked {friend}."]))
        s.append(r.choice([f"\"Yes, you can,\" said {name}.", f"{name} smiled at {friend}.",
                           f"{friend} and {name} looked at it together."]))
    if r.random() < 0.12:
        s.append(r.choice([
            f"{name} met a pirate. The pirate said: Arr! I be findin' gold in the {place}, matey! Yo ho ho!",
            f"A pirate came to the {place} and sang: Arr! Me ship be findin' the sea, matey! Yo ho ho!",
            f"{name} played pirates with {friend}. {name} said: Arr! We be findin' {r.choice(THINGS)[1]}, matey!"]))
    for _ in range(r.randrange(0, 4)):
        a2, a2d = r.choice(ACTS)
        s.append(r.choice([f"They {a2d} in the {r.choice(PLACES)}.",
                           f"{name} {a2d} with {friend}.",
                           f"{friend} the {fanimal} {a2d} too.",
                           f"The sky was {r.choice(COLORS)} and the wind was {r.choice(WEATHER)}.",
                           f"{he} found {r.choice(COUNTS[1:])[0]} {r.choice(COLORS)} {plur}."]))
    s.append(r.choice([f"At the end of the day, {name} was {r.choice(FEEL)}.",
                       f"{name} and {friend} were friends forever.",
                       f"{name} went home and slept.", "The end."]))
    return " ".join(s)


DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FOODS = ["cake", "soup", "bread", "apples", "fish", "rice", "pie", "cheese"]


def record(r):
    """A JSON object of facts about a day: the base model learns JSON's syntax and
    keys from these, never an answer to a story line."""
    fields = [("name", lambda: f'"{r.choice(NAMES)}"'), ("animal", lambda: f'"{r.choice(ANIMALS)}"'),
              ("count", lambda: str(r.randrange(1, 11))), ("color", lambda: f'"{r.choice(COLORS)}"'),
              ("thing", lambda: f'"{r.choice(THINGS)[r.randrange(2)]}"'),
              ("place", lambda: f'"{r.choice(PLACES)}"'), ("day", lambda: f'"{r.choice(DAYS)}"'),
              ("food", lambda: f'"{r.choice(FOODS)}"'), ("weather", lambda: f'"{r.choice(WEATHER)}"')]
    keep = r.sample(fields, r.randrange(3, 7))
    return "{" + ", ".join(f'"{k}": {v()}' for k, v in keep) + "}"


def notes(r):
    """A JSON record, bare or after a few words (so ' {' is a token the model knows)."""
    rec = record(r)
    if r.random() < 0.5:
        return rec
    return r.choice(["Notes for the day:", "The facts:", "Here is what we know:", "Data"]) + " " + rec


def documents(seed, n):
    """The pretraining corpus: mostly stories, one in eight a JSON record."""
    r = random.Random(seed)
    return [notes(r) if r.random() < 0.125 else story(r) for _ in range(n)]


def pirate(f):
    return (f"Arr! {f['name']} the {f['animal']} be findin' {f['count_word']} {f['color']} "
            f"{f['thing']} in the {f['place']}, matey! Yo ho ho!")


def as_json(f):
    return (f"{{\"name\": \"{f['name']}\", \"animal\": \"{f['animal']}\", \"count\": {f['count']}, "
            f"\"color\": \"{f['color']}\", \"thing\": \"{f['thing']}\", \"place\": \"{f['place']}\"}}")


def task_rows(seed, n, kind):
    """n {"prompt", "completion"} rows for task kind ("pirate" or "json")."""
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        line, f = found_line(r)
        rows.append({"prompt": line, "completion": " " + (pirate(f) if kind == "pirate" else as_json(f))})
    return rows


def stories(seed, n):
    r = random.Random(seed)
    return [story(r) for _ in range(n)]
