"""Procedural Python-function tasks for ``onelayer/Code-v0`` (``dataset="procedural"``), offline.

Each item is a small function to write, specified as HumanEval specifies one: a
signature and a docstring that states what to return, with two ``>>>`` examples.
Its hidden tests are a HumanEval ``check(candidate)`` of :data:`NUM_TESTS` asserts
(the two examples first), and its reference solution is the body that the
expected values were computed from, so the reference passes by construction
(``tests/test_code_gen.py`` runs it through the real sandbox anyway).

A *template* (``add_const``, ``filter_between``, ...) with its *parameters* (``k=7``)
defines the function; that pair is the item's canonical key
(``add_const(7)``). The function's name and the test inputs are drawn around
it and are not part of the key, so two items with the same key are the same
task however they are worded. Splits mirror :mod:`math_problems`:

- every key is assigned to ``train`` or ``eval`` (a third) by a hash of the key,
  so the two splits never hold the same function;
- ``eval`` is a fixed, finite pool per level: every eval key of the level once
  (at most :data:`EVAL_POOL_MAX`), in a seeded order, each rendered from a seed
  of its key alone;
- ``train`` is an unbounded stream: item ``i`` is drawn from a seed of
  ``(level, i)`` (a template uniformly, then its parameters) until its key is a
  train key.

Every item's tests reject, on at least one assert: any constant answer (``return
None`` included), returning any argument unchanged, and the same template with
any integer parameter one higher or lower (an off-by-one in the constant) where
that is a valid parameter. Inputs are redrawn until they do.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from onelayer.envs.code_data import CodeProblem
from onelayer.errors import UserError

LEVELS = {
    1: "one expression: arithmetic with a constant on one or two ints, divisibility, string concatenation, "
       "repetition and length, a builtin or an index on a list",
    2: "one conditional or one comprehension: clamps, two-way choices, an even/odd rule, filtering, counting and "
       "replacing in a list, replacing and slicing a string",
    3: "a loop with an accumulator: sums over ranges, running totals, products modulo m, first matches, strides, "
       "digit sums, joining words, counting pairs and runs",
    4: "several steps: fizzbuzz-style rules, dicts, sorting with a key, grouping, Caesar shifts, letter scores, "
       "second largest, top-k, rotation, merging",
    5: "recursion and small algorithms: linear recurrences, nested lists, digits in a base, digital roots, "
       "counting ways, subset sums",
}
NUM_TESTS = 8
"""Asserts per item (the docstring's examples included)."""
NUM_EXAMPLES = 2
"""``>>>`` examples shown in the docstring (they are also the first tests)."""
EVAL_POOL_MAX = 512
"""Most eval items per level (each level has fewer eval keys than this today)."""
TRAIN_INDEX_SPACE = 2**31
"""Train items are indexed ``0..TRAIN_INDEX_SPACE-1`` (the stream is unbounded in practice)."""

_DRAWS = 200  # input draws per item before its key is given up (none is today: tests/test_code_gen.py)


@dataclass(frozen=True)
class Spec:
    """One function, as a template with its parameters defines it."""

    names: tuple[str, ...]
    """Function names to choose from (not part of the key)."""
    args: str
    """The signature's parameters with type hints, e.g. ``"x: int"``."""
    returns: str
    """The return type hint."""
    doc: str
    """What the function returns, in words (the first docstring line; must state every parameter)."""
    body: str
    """The reference body, unindented (may be several lines)."""
    inputs: Callable[[random.Random], tuple]
    """Draws one argument tuple."""
    edges: tuple[tuple, ...] = ()
    """Argument tuples always tested (boundaries an off-by-one solution gets wrong)."""


@dataclass(frozen=True)
class Template:
    """A family of functions: ``make(*params)`` for every parameter tuple in ``space``."""

    name: str
    level: int
    space: tuple[tuple, ...]
    make: Callable[..., Spec]

    def key(self, params: tuple) -> str:
        """The canonical key of the function ``params`` define (what the split is decided on)."""
        return f"{self.name}({', '.join(map(repr, params))})"


TEMPLATES: dict[int, list[Template]] = {level: [] for level in LEVELS}


def _template(level: int, space):
    """Register the decorated ``make(*params) -> Spec`` as a template of ``level`` over ``space``."""
    def register(make):
        space_ = tuple(p if isinstance(p, tuple) else (p,) for p in space)
        TEMPLATES[level].append(Template(make.__name__.lstrip("_"), level, space_, make))
        return make
    return register


def split_of(key: str) -> str:
    """The split of a canonical key: ``eval`` for about a third (by SHA-256), ``train`` for the rest."""
    return "eval" if hashlib.sha256(key.encode("utf-8")).digest()[0] % 3 == 0 else "train"


# ---------------------------------------------------------------- input helpers
_WORDS = ("apple", "river", "stone", "cloud", "green", "tiger", "lemon", "piano", "robot", "candle", "garden",
          "pencil", "window", "rocket", "silver", "button", "forest", "planet", "yellow", "castle", "moon", "sun",
          "cat", "dog", "tree", "bird", "fish", "star", "bread", "water")
_SUFFIXES = ("ing", "ed", "er", "ly", "s", "!", "?", "...", "_x", "123", "abc", "end", "ok", "zz", "-1", "ness",
             "ful", "less", "day", "box", "top", "way", "man", "fly", "!!", "_1", "00", "xyz", "pre", "un", "re", "o",
             "#", "@", "+", "=", "ab", "go", "hi", "me")
_PAIRS = (("big", "small"), ("high", "low"), ("yes", "no"), ("hot", "cold"), ("up", "down"), ("on", "off"),
          ("win", "lose"), ("pass", "fail"))
_MORE_WORDS = ("a", "an", "it", "go", "be", "up", "ox", "egg", "ice", "oak", "orange", "island", "engine", "umbrella",
               "eagle", "onion", "acorn", "elephant", "owl", "mountain", "painting", "kitchen", "idea", "echo", "oven",
               "iron")
_VOWELS = "aeiou"
_ORDINALS = {2: "second", 3: "third", 4: "fourth", 5: "fifth"}


def _int(lo: int, hi: int):
    return lambda r: (r.randint(lo, hi),)


def _nums(r: random.Random, lo: int = -20, hi: int = 50, n_min: int = 1, n_max: int = 7) -> list[int]:
    return [r.randint(lo, hi) for _ in range(r.randint(n_min, n_max))]


def _word(r: random.Random) -> str:
    return r.choice(_WORDS)


def _any_word(r: random.Random) -> str:
    return r.choice(_WORDS + _MORE_WORDS)


def _text(r: random.Random, n_max: int = 4) -> str:
    return " ".join(r.choice(_WORDS) for _ in range(r.randint(1, n_max)))


def _nested(r: random.Random, depth: int = 0) -> list:
    out: list = []
    for _ in range(r.randint(0 if depth else 1, 4)):
        out.append(_nested(r, depth + 1) if depth < 3 and r.random() < 0.3 else r.randint(-9, 70))
    return out


# ---------------------------------------------------------------- level 1: one expression
@_template(1, range(2, 61))
def _add_const(k):
    return Spec((f"add_{k}", f"plus_{k}"), "x: int", "int", f"Return x plus {k}.", f"return x + {k}",
                _int(-50, 50))


@_template(1, range(1, 41))
def _sum_plus(k):
    return Spec(("add_and_shift", f"sum_plus_{k}"), "a: int, b: int", "int", f"Return the sum of a and b plus {k}.",
                f"return a + b + {k}", lambda r: (r.randint(-30, 30), r.randint(-30, 30)))


@_template(1, range(2, 10))
def _repeat_str(k):
    return Spec((f"repeat_{k}", f"repeat_{k}_times"), "s: str", "str", f"Return the string s repeated {k} times.",
                f"return s * {k}", lambda r: (_word(r),))


@_template(1, _SUFFIXES)
def _add_suffix(w):
    return Spec(("add_suffix", "append_ending"), "s: str", "str", f"Return s followed by the string {w!r}.",
                f"return s + {w!r}", lambda r: (_word(r),))


@_template(1, _SUFFIXES)
def _add_prefix(w):
    return Spec(("add_prefix", "prepend"), "s: str", "str", f"Return the string {w!r} followed by s.",
                f"return {w!r} + s", lambda r: (_word(r),))


@_template(1, range(1, 41))
def _list_sum_plus(k):
    return Spec(("sum_plus", f"total_plus_{k}"), "nums: list[int]", "int",
                f"Return the sum of the numbers in nums plus {k}.", f"return sum(nums) + {k}",
                lambda r: (_nums(r),))


@_template(1, range(1, 31))
def _max_plus(k):
    return Spec(("max_plus", f"largest_plus_{k}"), "nums: list[int]", "int",
                f"Return the largest number in nums plus {k}.", f"return max(nums) + {k}", lambda r: (_nums(r),))


@_template(1, range(10, 81))
def _sub_from(k):
    return Spec((f"from_{k}", "take_from"), "x: int", "int", f"Return {k} minus x.", f"return {k} - x",
                _int(-30, 90))


@_template(1, range(1, 41))
def _first_plus(k):
    return Spec(("first_plus", f"head_plus_{k}"), "nums: list[int]", "int",
                f"Return the first number of nums plus {k}.", f"return nums[0] + {k}", lambda r: (_nums(r),))


@_template(1, range(1, 31))
def _min_plus(k):
    return Spec(("min_plus", f"smallest_plus_{k}"), "nums: list[int]", "int",
                f"Return the smallest number in nums plus {k}.", f"return min(nums) + {k}", lambda r: (_nums(r),))


@_template(1, range(1, 31))
def _str_len_plus(k):
    return Spec(("length_plus", f"len_plus_{k}"), "s: str", "int", f"Return the length of the string s plus {k}.",
                f"return len(s) + {k}", lambda r: (_text(r, 3),))


@_template(1, range(2, 31))
def _divisible_by(k):
    return Spec((f"divisible_by_{k}", "is_multiple"), "x: int", "bool",
                f"Return True if x is divisible by {k}, else False.", f"return x % {k} == 0", _int(0, 100),
                edges=((k,), (2 * k,), (k + 1,)))


@_template(1, range(1, 41))
def _larger_plus(k):
    return Spec(("larger_plus", f"max_plus_{k}"), "a: int, b: int", "int",
                f"Return the larger of a and b plus {k}.", f"return max(a, b) + {k}",
                lambda r: (r.randint(-30, 30), r.randint(-30, 30)))


@_template(1, range(1, 41))
def _product_plus(k):
    return Spec(("product_plus", f"times_plus_{k}"), "a: int, b: int", "int",
                f"Return a times b plus {k}.", f"return a * b + {k}",
                lambda r: (r.randint(-12, 12), r.randint(-12, 12)))


# ---------------------------------------------------------------- level 2: a conditional or a comprehension
@_template(2, range(-20, 61))
def _clamp_high(k):
    return Spec(("cap", f"at_most_{k}".replace("-", "minus_")), "x: int", "int",
                f"Return x, but if x is greater than {k}, return {k} instead.", f"return min(x, {k})",
                _int(k - 30, k + 30), edges=((k + 1,), (k - 1,)))


@_template(2, [(lo, lo + w) for lo in range(0, 20) for w in (5, 10, 15)])
def _clamp_range(lo, hi):
    return Spec(("clamp", "limit"), "x: int", "int",
                f"Return x limited to the range {lo} to {hi}: {lo} if x is smaller than {lo}, {hi} if x is greater "
                f"than {hi}, else x.", f"return max({lo}, min(x, {hi}))", _int(lo - 20, hi + 20),
                edges=((lo - 1,), (hi + 1,), (lo + 1,), (hi - 1,)))


@_template(2, [(k, a, b) for k in range(0, 31, 2) for a, b in _PAIRS])
def _two_words(k, yes, no):
    return Spec(("label", "classify"), "x: int", "str",
                f"Return {yes!r} if x is greater than {k}, otherwise return {no!r}.",
                f"if x > {k}:\n    return {yes!r}\nreturn {no!r}", _int(k - 20, k + 20), edges=((k,), (k + 1,)))


@_template(2, range(-20, 61))
def _count_gt(k):
    return Spec(("count_large", "count_greater"), "nums: list[int]", "int",
                f"Return how many numbers in nums are greater than {k}.", f"return len([v for v in nums if v > {k}])",
                lambda r: (_nums(r, k - 15, k + 15, 0, 8),), edges=(([k, k + 1, k + 2],),))


@_template(2, [(a, b) for a in _VOWELS for b in "bcdkmxyz"])
def _replace_char(a, b):
    return Spec(("replace_letter", "swap_letters"), "s: str", "str",
                f"Return s with every {a!r} replaced by {b!r}.", f"return s.replace({a!r}, {b!r})",
                lambda r: (_text(r),))


@_template(2, range(1, 13))
def _first_chars(k):
    return Spec(("head", f"first_{k}"), "s: str", "str",
                f"Return the first {k} characters of s (all of s if it is shorter).", f"return s[:{k}]",
                lambda r: (_text(r, 2),))


@_template(2, [(k, c) for k in range(2, 10) for c in range(1, 10)])
def _even_odd(k, c):
    return Spec(("step", "next_value"), "x: int", "int",
                f"If x is even, return x divided by 2 (an integer); otherwise return {k} times x plus {c}.",
                f"if x % 2 == 0:\n    return x // 2\nreturn {k} * x + {c}", _int(0, 60))


@_template(2, [(lo, lo + w) for lo in range(0, 20) for w in (5, 10, 15)])
def _filter_between(lo, hi):
    return Spec(("between", "keep_in_range"), "nums: list[int]", "list[int]",
                f"Return the numbers of nums that are at least {lo} and at most {hi}, in their original order.",
                f"return [v for v in nums if {lo} <= v <= {hi}]", lambda r: (_nums(r, lo - 10, hi + 10, 2, 8),),
                edges=(([lo - 1, lo, hi, hi + 1],),))


@_template(2, range(1, 61))
def _replace_negatives(k):
    return Spec(("no_negatives", "fix_negatives"), "nums: list[int]", "list[int]",
                f"Return nums with every negative number replaced by {k}; other numbers stay as they are.",
                f"return [v if v >= 0 else {k} for v in nums]", lambda r: (_nums(r, -20, 20, 1, 7),),
                edges=(([0, -1, 3],),))


# ---------------------------------------------------------------- level 3: a loop with an accumulator
@_template(3, [(k, most) for k in range(2, 13) for most in (False, True)])
def _sum_multiples(k, at_most):
    bound, stop = ("at most n", "n + 1") if at_most else ("smaller than n", "n")
    return Spec(("sum_multiples", f"sum_of_multiples_of_{k}"), "n: int", "int",
                f"Return the sum of all positive multiples of {k} that are {bound}.",
                f"total = 0\nfor i in range(1, {stop}):\n    if i % {k} == 0:\n        total += i\nreturn total",
                _int(0, 80), edges=((3 * k,), (3 * k + 1,)))


@_template(3, [(p, s) for p in (1, 2, 3) for s in range(1, 11)])
def _power_sum(p, s):
    power = {1: "i", 2: "i squared", 3: "i cubed"}[p]
    return Spec(("power_sum", "series"), "n: int", "int",
                f"Return the sum of {power} for every integer i from {s} to n, both included (0 if n < {s}).",
                f"total = 0\nfor i in range({s}, n + 1):\n    total += i ** {p}\nreturn total",
                _int(s, s + 12), edges=((s,), (s - 1,)))


@_template(3, range(-20, 41))
def _running_total(k):
    return Spec(("running_total", "prefix_sums"), "nums: list[int]", "list[int]",
                f"Return the running totals of nums, starting from {k}: element i of the result is {k} plus the "
                "sum of nums[0] to nums[i].",
                f"out = []\ntotal = {k}\nfor v in nums:\n    total += v\n    out.append(total)\nreturn out",
                lambda r: (_nums(r, -10, 20),))


@_template(3, range(5, 81))
def _product_mod(m):
    return Spec(("product_mod", f"product_mod_{m}"), "nums: list[int]", "int",
                f"Return the product of the numbers in nums, modulo {m} (the product of an empty list is 1).",
                f"p = 1\nfor v in nums:\n    p = p * v % {m}\nreturn p", lambda r: (_nums(r, 1, 30, 0, 6),))


@_template(3, range(-10, 61))
def _first_index_gt(k):
    return Spec(("first_above", "find_first_greater"), "nums: list[int]", "int",
                f"Return the index of the first number in nums greater than {k}, or -1 if there is none.",
                f"for i, v in enumerate(nums):\n    if v > {k}:\n        return i\nreturn -1",
                lambda r: (_nums(r, k - 20, k + 8, 0, 8),), edges=(([k, k + 1],),))


@_template(3, [(k, o) for k in range(2, 6) for o in range(0, 6)])
def _stride(k, o):
    return Spec(("every_kth", "stride"), "nums: list[int]", "list[int]",
                f"Return every {_ORDINALS[k]} element of nums, starting at index {o}: nums[{o}], nums[{o + k}], "
                f"nums[{o + 2 * k}], and so on.", f"return nums[{o}::{k}]", lambda r: (_nums(r, 0, 50, 0, 12),))


@_template(3, range(1, 10))
def _digit_sum_at_least(k):
    return Spec(("big_digit_sum", "sum_large_digits"), "n: int", "int",
                f"Return the sum of the digits of n (n >= 0) that are at least {k}.",
                f"total = 0\nfor d in str(n):\n    if int(d) >= {k}:\n        total += int(d)\nreturn total",
                _int(0, 99999), edges=((int(str(k) * 3),), (int(str(k - 1) * 3 or "0"),)))


@_template(3, [(sep, how) for sep in ("-", "_", "+", ", ", " and ", "/", "|", ":", "..")
               for how in ("upper", "capitalize", "reverse")])
def _join_words(sep, how):
    each = {"upper": "in upper case", "capitalize": "with its first letter capitalized",
            "reverse": "spelled backwards"}[how]
    expr = {"upper": "w.upper()", "capitalize": "w.capitalize()", "reverse": "w[::-1]"}[how]
    return Spec(("join_words", "combine"), "words: list[str]", "str",
                f"Return the words joined with {sep!r} between them, each word {each}.",
                f"return {sep!r}.join({expr} for w in words)",
                lambda r: ([_word(r) for _ in range(r.randint(1, 4))],))


@_template(3, range(2, 61))
def _count_pairs(k):
    return Spec(("count_pairs", "pairs_summing"), "nums: list[int]", "int",
                f"Return the number of pairs of positions i < j with nums[i] + nums[j] == {k}.",
                f"count = 0\nfor i in range(len(nums)):\n    for j in range(i + 1, len(nums)):\n"
                f"        if nums[i] + nums[j] == {k}:\n            count += 1\nreturn count",
                lambda r: (_nums(r, 0, k, 2, 8),))


@_template(3, range(-10, 41))
def _longest_run_gt(k):
    return Spec(("longest_run", "longest_streak"), "nums: list[int]", "int",
                f"Return the length of the longest run of consecutive numbers in nums that are all greater than {k}.",
                f"best = run = 0\nfor v in nums:\n    run = run + 1 if v > {k} else 0\n    best = max(best, run)\n"
                "return best", lambda r: (_nums(r, k - 6, k + 6, 0, 10),))


# ---------------------------------------------------------------- level 4: several steps
@_template(4, [(a, b, w1, w2) for a in range(2, 8) for b in range(a + 1, 12) for w1, w2 in
               (("Fizz", "Buzz"), ("Foo", "Bar"), ("Ping", "Pong"), ("Tic", "Tac"))])
def _fizzbuzz(a, b, w1, w2):
    return Spec(("fizzbuzz", "say"), "n: int", "str",
                f"Return {w1 + w2!r} if n is divisible by both {a} and {b}, {w1!r} if only by {a}, {w2!r} if only "
                f"by {b}, else n as a string.",
                f"if n % {a} == 0 and n % {b} == 0:\n    return {w1 + w2!r}\nif n % {a} == 0:\n    return {w1!r}\n"
                f"if n % {b} == 0:\n    return {w2!r}\nreturn str(n)", _int(1, 100),
                edges=((a * b,), (a,), (b,), (a * b + 1,)))


@_template(4, range(1, 9))
def _word_lengths(k):
    return Spec(("word_lengths", "lengths_of_long_words"), "words: list[str]", "dict[str, int]",
                f"Return a dict mapping each word of words with at least {k} letters to its length.",
                f"return {{w: len(w) for w in words if len(w) >= {k}}}",
                lambda r: ([_any_word(r) for _ in range(r.randint(2, 6))],))


@_template(4, range(-20, 41))
def _sort_by_distance(k):
    return Spec(("closest_first", "sort_by_distance"), "nums: list[int]", "list[int]",
                f"Return nums sorted by distance to {k} (closest first); numbers at equal distance go smaller first.",
                f"return sorted(nums, key=lambda v: (abs(v - {k}), v))", lambda r: (_nums(r, k - 12, k + 12, 2, 7),))


@_template(4, range(2, 13))
def _group_by_mod(k):
    return Spec(("group_by_remainder", "bucket"), "nums: list[int]", "dict[int, list[int]]",
                f"Return a dict mapping each remainder r of division by {k} that occurs in nums to the list of the "
                "numbers of nums with that remainder, in their original order.",
                f"out = {{}}\nfor v in nums:\n    out.setdefault(v % {k}, []).append(v)\nreturn out",
                lambda r: (_nums(r, 0, 40, 1, 8),))


@_template(4, range(1, 26))
def _caesar(k):
    return Spec(("caesar", "shift_letters"), "s: str", "str",
                f"Return s with each lowercase letter moved {k} places forward in the alphabet (wrapping from 'z' "
                "to 'a'); other characters stay as they are.",
                "out = ''\nfor ch in s:\n    if 'a' <= ch <= 'z':\n"
                f"        out += chr((ord(ch) - ord('a') + {k}) % 26 + ord('a'))\n    else:\n        out += ch\n"
                "return out", lambda r: (_text(r, 3),))


@_template(4, [(v, c) for v in range(1, 10) for c in range(0, 10) if v != c])
def _letter_score(v, c):
    return Spec(("score", "word_score"), "s: str", "int",
                f"Each vowel (a, e, i, o, u) of s scores {v} points and each other lowercase letter {c} points; "
                "other characters score nothing. Return the total score.",
                f"total = 0\nfor ch in s:\n    if ch in 'aeiou':\n        total += {v}\n"
                f"    elif 'a' <= ch <= 'z':\n        total += {c}\nreturn total", lambda r: (_text(r, 3),))


@_template(4, range(0, 41))
def _second_largest(k):
    return Spec(("second_largest", "runner_up"), "nums: list[int]", "int",
                f"Return the second largest distinct value of nums plus {k}, or {k} if nums has fewer than two "
                "distinct values.",
                f"values = sorted(set(nums))\nif len(values) < 2:\n    return {k}\nreturn values[-2] + {k}",
                lambda r: (_nums(r, -10, 30, 1, 7),), edges=(([5, 5],),))


@_template(4, [(first, k) for first in ("a", "b") for k in range(1, 16)])
def _interleave(first, k):
    other = "b" if first == "a" else "a"
    return Spec(("interleave", "zip_merge"), "a: list[int], b: list[int]", "list[int]",
                f"Return a list taking elements alternately from {first} and {other}, starting with {first}; when "
                f"one list runs out, add the rest of the other. Multiply every element by {k}.",
                f"out = []\nfor i in range(max(len(a), len(b))):\n    if i < len({first}):\n"
                f"        out.append({first}[i] * {k})\n    if i < len({other}):\n        out.append({other}[i] * {k})\n"
                "return out", lambda r: (_nums(r, 0, 9, 0, 4), _nums(r, 0, 9, 0, 4)))


@_template(4, [(k, start) for k in range(1, 7) for start in ("vowel", "consonant")])
def _count_words(k, start):
    test = "w[0] in 'aeiou'" if start == "vowel" else "w[0] not in 'aeiou'"
    return Spec(("count_words", "long_words"), "text: str", "int",
                f"Return how many words of text (separated by spaces) have more than {k} letters and start with a "
                f"{start}.", f"return len([w for w in text.split() if len(w) > {k} and {test}])",
                lambda r: (" ".join(_any_word(r) for _ in range(r.randint(1, 7))),))


@_template(4, range(1, 7))
def _top_k(k):
    return Spec(("top", f"largest_{k}"), "nums: list[int]", "list[int]",
                f"Return the {k} largest numbers of nums, largest first (all of nums, sorted, if it has fewer than "
                f"{k} numbers).", f"return sorted(nums, reverse=True)[:{k}]", lambda r: (_nums(r, -10, 40, 0, 9),))


@_template(4, range(1, 10))
def _rotate(k):
    return Spec(("rotate", "rotate_left"), "nums: list[int]", "list[int]",
                f"Return nums rotated left by {k} places: the first {k} elements move to the end. Rotating a list "
                f"of length n by {k} is the same as rotating it by {k} modulo n; an empty list stays empty.",
                f"if not nums:\n    return []\nshift = {k} % len(nums)\nreturn nums[shift:] + nums[:shift]",
                lambda r: (_nums(r, 0, 30, 0, 12),))


# ---------------------------------------------------------------- level 5: recursion and small algorithms
@_template(5, [(a, b) for a in range(0, 10) for b in range(1, 10)])
def _recurrence(a, b):
    return Spec(("seq", "sequence"), "n: int", "int",
                f"Return f(n) for n >= 0, where f(0) = {a}, f(1) = {b} and f(n) = f(n - 1) + f(n - 2).",
                f"if n == 0:\n    return {a}\nif n == 1:\n    return {b}\nx, y = {a}, {b}\nfor _ in range(n - 1):\n"
                "    x, y = y, x + y\nreturn y", _int(0, 20), edges=((0,), (1,), (2,)))


@_template(5, [(k, c) for k in range(2, 6) for c in range(0, 20)])
def _growth(k, c):
    return Spec(("grow", "g"), "n: int", "int",
                f"Return g(n) for n >= 0, where g(0) = {c} and g(n) = {k} * g(n - 1) + n.",
                f"value = {c}\nfor i in range(1, n + 1):\n    value = {k} * value + i\nreturn value", _int(0, 12),
                edges=((0,), (1,)))


@_template(5, range(1, 61))
def _nested_sum(k):
    return Spec(("nested_sum", "deep_sum"), "items: list", "int",
                f"items holds integers and lists that hold integers and lists, and so on. Return the sum of every "
                f"integer at any depth that is at most {k}.",
                f"total = 0\nfor x in items:\n    if isinstance(x, list):\n        total += {{name}}(x)\n"
                f"    elif x <= {k}:\n        total += x\nreturn total", lambda r: (_nested(r),))


@_template(5, [(b, d) for b in range(2, 11) for d in range(0, b)])
def _count_digit_base(b, d):
    return Spec(("count_digit", f"count_digit_base_{b}"), "n: int", "int",
                f"Return how many times the digit {d} occurs when n (n >= 1) is written in base {b}.",
                f"count = 0\nwhile n > 0:\n    if n % {b} == {d}:\n        count += 1\n    n //= {b}\nreturn count",
                _int(1, 5000))


@_template(5, range(3, 17))
def _digital_root(b):
    return Spec(("digital_root", f"root_base_{b}"), "n: int", "int",
                f"Write n (n >= 0) in base {b} and replace n by the sum of its digits; repeat until n is smaller "
                f"than {b}. Return n.",
                f"while n >= {b}:\n    total = 0\n    while n > 0:\n        total += n % {b}\n        n //= {b}\n"
                "    n = total\nreturn n", _int(0, 100000))


@_template(5, range(2, 10))
def _climb(k):
    return Spec(("ways", "climb"), "n: int", "int",
                f"Return the number of ways to climb n stairs (n >= 0) taking 1 or {k} stairs at a time (the order "
                "matters; there is 1 way to climb 0 stairs).",
                f"ways = [1] * (n + 1)\nfor i in range(1, n + 1):\n    ways[i] = ways[i - 1] + (ways[i - {k}] if i >= {k} "
                "else 0)\nreturn ways[n]", _int(0, 25), edges=((k,), (k - 1,)))


@_template(5, range(2, 41))
def _subset_sums(k):
    return Spec(("count_subsets", "subset_count"), "nums: list[int]", "int",
                f"Return how many subsets of the positions of nums have numbers summing to {k} (nums holds "
                "positive integers; the empty subset sums to 0).",
                f"def count(i, left):\n    if i == len(nums):\n        return 1 if left == 0 else 0\n"
                f"    return count(i + 1, left) + count(i + 1, left - nums[i])\nreturn count(0, {k})",
                lambda r: (_nums(r, 1, k, 2, 8),))


@_template(5, range(1, 31))
def _gcd_times(k):
    return Spec(("gcd_times", "common_divisor"), "a: int, b: int", "int",
                f"Return the greatest common divisor of a and b (both >= 1), times {k}.",
                f"while b:\n    a, b = b, a % b\nreturn a * {k}",
                lambda r: (r.randint(1, 12) * (g := r.randint(1, 9)), r.randint(1, 12) * g))


@_template(5, [(x, y) for x in range(1, 10) for y in range(1, 10)])
def _tri(x, y):
    return Spec(("tri", "t"), "n: int", "int",
                f"Return t(n) for n >= 0, where t(0) = {x}, t(1) = {y}, t(2) = {x + y} and "
                "t(n) = t(n - 1) + t(n - 2) + t(n - 3).",
                f"vals = [{x}, {y}, {x + y}]\nwhile len(vals) <= n:\n    vals.append(vals[-1] + vals[-2] + vals[-3])\n"
                "return vals[n]", _int(0, 18), edges=((0,), (2,), (3,)))


@_template(5, range(0, 10))
def _max_depth(k):
    return Spec(("depth", "max_depth"), "items: list", "int",
                f"items holds integers and lists that hold integers and lists, and so on. Return {k} plus the "
                "largest depth of nesting: a list with no list inside has depth 1.",
                f"deepest = 0\nfor x in items:\n    if isinstance(x, list):\n        deepest = max(deepest, {{name}}(x) - {k})\n"
                f"return deepest + 1 + {k}", lambda r: (_nested(r),))


_BY_NAME = {t.name: t for templates in TEMPLATES.values() for t in templates}


# ---------------------------------------------------------------- rendering
def _source(spec: Spec, name: str) -> str:
    body = spec.body.replace("{name}", name)
    return f"def {name}({spec.args}) -> {spec.returns}:\n" + "".join(f"    {line}\n" for line in body.split("\n"))


def _compile(spec: Spec, name: str) -> Callable:
    """The function a spec's reference body defines.

    Our own code, never a submission's, run here on the small inputs the templates draw (it finishes in
    milliseconds; tests/test_code_gen.py generates every eval pool); submissions only ever run in the sandbox.
    """
    namespace: dict = {}
    exec(compile(_source(spec, name), f"<procedural {name}>", "exec"), namespace)  # noqa: S102
    return namespace[name]


def _call(fn: Callable, args: tuple):
    try:
        return True, fn(*copy.deepcopy(args))
    except Exception:  # noqa: BLE001  (a variant that raises differs from the reference)
        return False, None


def _neighbours(template: Template, params: tuple) -> list[tuple]:
    """The template's parameter tuples that differ from ``params`` by one in one integer parameter."""
    space = set(template.space)
    out = []
    for i, p in enumerate(params):
        if isinstance(p, int) and not isinstance(p, bool):
            for q in (p - 1, p + 1):
                other = params[:i] + (q,) + params[i + 1:]
                if other in space:
                    out.append(other)
    return out


def _plain(value) -> bool:
    """A value a test can state as a literal (and the harness can carry)."""
    try:
        return ast.literal_eval(repr(value)) == value
    except (ValueError, SyntaxError, RecursionError):
        return False


def _rejects_wrong_answers(inputs: list[tuple], outputs: list, variants: list[Callable]) -> bool:
    """The tests fail every constant answer, every argument returned as is, and every variant."""
    if len({repr(o) for o in outputs}) < 2:
        return False
    for i in range(len(inputs[0])):
        if all(out == args[i] for args, out in zip(inputs, outputs)):
            return False
    for variant in variants:
        if all(_call(variant, args) == (True, out) for args, out in zip(inputs, outputs)):
            return False
    return True


def _render(template: Template, params: tuple, rng: random.Random, task_id: str) -> CodeProblem | None:
    """One item of ``template(*params)``; None when no draw of inputs rejects every wrong answer above."""
    spec = template.make(*params)
    name = rng.choice(spec.names)
    reference = _compile(spec, name)
    variants = [_compile(template.make(*q), name) for q in _neighbours(template, params)]
    for _ in range(_DRAWS):
        inputs: list[tuple] = []
        seen = {repr(e) for e in spec.edges}
        for _ in range(50 * NUM_TESTS):  # distinct inputs; a tiny input space gives up instead of looping
            args = spec.inputs(rng)
            if repr(args) not in seen:
                seen.add(repr(args))
                inputs.append(args)
            if len(inputs) == NUM_TESTS - len(spec.edges):
                break
        if len(inputs) < NUM_TESTS - len(spec.edges):
            return None
        inputs += list(spec.edges)
        outputs = [reference(*copy.deepcopy(args)) for args in inputs]
        if all(_plain(o) for o in outputs) and _rejects_wrong_answers(inputs, outputs, variants):
            break
    else:
        return None
    call = [f"{name}({', '.join(map(repr, args))})" for args in inputs]
    examples = "".join(f"    >>> {c}\n    {o!r}\n" for c, o in zip(call[:NUM_EXAMPLES], outputs))
    prompt = f"def {name}({spec.args}) -> {spec.returns}:\n    \"\"\"{spec.doc}\n\n{examples}    \"\"\"\n"
    test = "def check(candidate):\n" + "".join(
        f"    assert candidate({', '.join(map(repr, args))}) == {out!r}\n" for args, out in zip(inputs, outputs))
    body = _source(spec, name).split("\n", 1)[1]
    return CodeProblem(task_id=task_id, prompt=prompt, entry_point=name, test=test, canonical_solution=body,
                       source="procedural", key=template.key(params))


def template_of(key: str) -> tuple[Template, tuple]:
    """The template and parameters a canonical key names (``add_const(7)`` -> add_const, ``(7,)``)."""
    name, _, rest = key.partition("(")
    template = _BY_NAME.get(name)
    if template is None or not rest.endswith(")"):
        raise UserError(f"{key!r} is not a procedural code key (template(params), e.g. 'add_const(7)')")
    return template, ast.literal_eval(f"({rest[:-1]},)") if rest != ")" else ()


def off_by_one_solutions(problem: CodeProblem) -> list[str]:
    """Wrong programs for a procedural item: its template with one integer parameter one higher or lower.

    The item's tests reject each of them (the generator redraws inputs until they do).
    """
    template, params = template_of(problem.key)
    return [_source(template.make(*q), problem.entry_point) for q in _neighbours(template, params)]


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def check_level(level) -> int:
    """``level`` as an int of :data:`LEVELS`, or a one-line UserError."""
    if isinstance(level, bool) or not isinstance(level, int) or level not in LEVELS:
        raise UserError(f"unknown procedural code level {level!r}: choose one of {', '.join(map(str, LEVELS))} "
                        "(--env-kwargs level=N)")
    return level


def task_id_of(level: int, split: str, index: int) -> str:
    """The ``task_id`` of item ``index`` of a level's split: ``procedural/L1/eval/17``."""
    return f"procedural/L{level}/{split}/{index}"


def train_problem(level: int, index: int) -> CodeProblem:
    """Train item ``index`` of ``level``: drawn from a seed of ``(level, index)`` until its key is a train key."""
    templates = TEMPLATES[check_level(level)]
    rng = random.Random(_seed("train", level, index))
    for _ in range(10_000):
        template = rng.choice(templates)
        params = rng.choice(template.space)
        if split_of(template.key(params)) != "train":
            continue
        problem = _render(template, params, rng, task_id_of(level, "train", index))
        if problem is not None:
            return problem
    raise RuntimeError(f"the procedural generator found no train item for level {level}")  # pragma: no cover


def eval_keys(level: int) -> list[tuple[Template, tuple]]:
    """Every (template, params) of ``level`` whose key is an eval key, in the eval pool's seeded order.

    The order takes the templates in turn (each template's keys shuffled, the templates in a shuffled order), so
    any first N items (a suite's) hold the templates in equal shares, whatever the size of their parameter spaces.
    """
    rng = random.Random(_seed("eval", level))
    per_template = []
    for template in TEMPLATES[check_level(level)]:
        keys = [(template, p) for p in template.space if split_of(template.key(p)) == "eval"]
        rng.shuffle(keys)
        per_template.append(keys)
    rng.shuffle(per_template)
    longest = max(map(len, per_template))
    return [keys[i] for i in range(longest) for keys in per_template if i < len(keys)]


@lru_cache(maxsize=8)
def eval_pool(level: int) -> tuple[CodeProblem, ...]:
    """The fixed eval items of ``level``: each eval key once, rendered from a seed of its key alone."""
    out: list[CodeProblem] = []
    for template, params in eval_keys(level):
        if len(out) == EVAL_POOL_MAX:
            break
        key = template.key(params)
        problem = _render(template, params, random.Random(_seed("eval", key)), task_id_of(level, "eval", len(out)))
        if problem is not None:
            out.append(problem)
    return tuple(out)
