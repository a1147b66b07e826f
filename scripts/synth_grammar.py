"""The caption grammar of `gshn synth` (src/data/synth/grammar.rs), for the scripts that read it."""
import re

RELATIONS = ["to the left of", "to the right of", "above", "below"]
INVERSE = {"to the left of": "to the right of", "to the right of": "to the left of",
           "above": "below", "below": "above"}
_FACT = re.compile(r"(?:a|the) (\w+ \w+ \w+) (?:is )?(to the left of|to the right of|above|below)"
                   r" (?:a|the) (\w+ \w+ \w+)")
COUNTS = {"two": 2, "three": 3, "four": 4}


def parse(caption):
    """(A, relation, B) as stated, e.g. ("small red circle", "to the left of", "large blue square")."""
    m = _FACT.search(caption)
    if not m:
        raise ValueError(f"not a caption of the synthetic grammar: {caption!r}")
    return m.groups()


def canonical(caption):
    """The caption's fact with "right of" / "below" rewritten as "left of" / "above"."""
    a, rel, b = parse(caption)
    if rel in ("to the right of", "below"):
        a, rel, b = b, INVERSE[rel], a
    return a, rel, b


def background(caption):
    """"sky", "wall" or None: the background the caption names, if any."""
    if caption.endswith("under the sky"):
        return "sky"
    if caption.endswith("in front of a wall"):
        return "wall"
    return None


def count(caption):
    """The number of shapes the caption states ("two shapes: …"), if any."""
    head = caption.split(" shapes:")[0] if " shapes:" in caption else None
    return COUNTS.get(head)
