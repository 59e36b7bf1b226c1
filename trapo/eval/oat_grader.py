"""The OAT grader's rules, for the released evaluation protocol (`trapo eval --grading released`; docs/method.md,
"Evaluation").

TRAPO's and LUFFY's evaluation scripts re-grade an answer Math-Verify rejects with ``eval_scripts/oat_math_grader.py``
(byte-identical in both; sail-sg/oat ``oat/utils/math_grader.py``). The package that ships it (``oat-llm``) requires
Python < 3.11, so its rules are re-implemented here from their description, each tested on hand-made cases in
``tests/test_eval_grading.py``. `boxed_reward` is the entry point (the released ``boxed_reward_fn(fast=False)``):

1. the answer is the content of the *last* ``\\boxed{…}`` (else ``\\fbox{…}``), matched brace by brace; a response
   without one, or with ``\\boxed 5``, is wrong;
2. it is right when any of three tests says so: the two strings are equal after `mathd_normalize` (the MATH
   dataset's normaliser: fractions, ``\\left``/``\\right``, trailing units in ``\\text{ …}``, ``0.5``…);
   `sympy_equal` (a second normaliser, then element-wise for tuples and intervals, exact for fractions, and
   ``sympy.simplify(gold − answer) == 0`` for small expressions); `latex_equal` (Math-Verify on both, as LaTeX).

Known difference: the released MATH normaliser also strips a list of about 130 unit words (``\\text{cm}``, "inches",
…) from anywhere in the answer; here only the units of the sympy normaliser are stripped (degree, cm, meter, mile,
second, minute, hour, day, week, month, year, foot, feet, inch, yard), and ``\\text{ …}`` after an answer.
"""

from __future__ import annotations

import re

_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week", "month", "year",
          "foot", "feet", "inch", "yard")  # fmt: skip
_UNIT_PATTERNS = [re.compile(rf"{unit}(es)?(s)? *(\^[0-9]+)?") for unit in _UNITS]
_FORMATTED_COMMA = re.compile(r"(\d)(,)(\d\d\d)($|\D)")
_FRACTION = re.compile(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$")
_BAD_POWERS = (re.compile(r"\^[0-9]+\^"), re.compile(r"\^\{"), re.compile(r"\^\("), re.compile(r"\^[0-9][0-9]+"))


# ------------------------------------------------------------------------------------------------ extraction
def last_boxed_only(text: str) -> str | None:
    """``\\boxed{…}`` (or ``\\fbox{…}``) as written, for the last one in ``text``; None without one or unbalanced."""
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


def remove_boxed(boxed: str | None) -> str | None:
    """The content of ``\\boxed{…}``; None for anything else (``\\boxed 5``, ``\\fbox{…}``)."""
    if boxed is None or not boxed.startswith("\\boxed{") or not boxed.endswith("}"):
        return None
    return boxed[len("\\boxed{") : -1]


def extract_answer(text: str) -> str | None:
    """The answer the grader reads: the content of the last ``\\boxed{}``."""
    return remove_boxed(last_boxed_only(text)) if "\\boxed" in text else None


# ---------------------------------------------------------------------------------------- MATH's normaliser
def _fix_fracs(text: str) -> str:
    """``\\frac12`` → ``\\frac{1}{2}``, ``\\frac1{72}`` → ``\\frac{1}{72}``, ``\\frac{1}2`` → ``\\frac{1}{2}``."""
    parts = text.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{"):
            if len(part) >= 2 and part.count("}") >= 1:
                close = part.index("}")
                rest = part[close + 1 :]
                if rest and not rest.startswith("{"):
                    out += part[: close + 1] + "{" + rest[0] + "}" + rest[1:]
                    continue
            out += part
        elif len(part) >= 2:
            a, b, rest = part[0], part[1], part[2:]
            out += "{" + a + "}" + (b + rest if b == "{" else "{" + b + "}" + rest)
        else:
            return text
    return out


def _fix_sqrt(text: str) -> str:
    """``\\sqrt3`` → ``\\sqrt{3}``."""
    parts = text.split("\\sqrt")
    out = parts[0]
    for part in parts[1:]:
        out += "\\sqrt" + (part if not part or part.startswith("{") else "{" + part[0] + "}" + part[1:])
    return out


def _fix_a_slash_b(text: str) -> str:
    """``3/4`` (two integers and nothing else) → ``\\frac{3}{4}``."""
    parts = text.split("/")
    if len(parts) == 2 and all(re.fullmatch(r"-?\d+", p) for p in parts) and not parts[1].startswith("-"):
        return f"\\frac{{{int(parts[0])}}}{{{int(parts[1])}}}"
    return text


def mathd_normalize(answer: str | None) -> str | None:
    """The MATH dataset's answer normaliser (``mathd_normalize_answer``), rule by rule."""
    if answer is None:
        return None
    text = answer.strip()
    whole_text = re.fullmatch(r"\\text\{(.*)\}", text)
    if whole_text:
        text = whole_text.group(1)
    text = text.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", text).replace("\\end{array}", "\\end{pmatrix}")
    text = text.replace("bmatrix", "pmatrix").replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    text = text.replace("\\left", "").replace("\\right", "")
    without_text = re.sub(r"\\text\{.*?\}$", "", text).strip()
    if without_text and without_text != text:
        text = without_text
    text = text.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in text:  # "5 \text{ cm}": the units after the answer
        text = text.split("\\text{ ")[0]
    text = text.replace("\\%", "").replace("%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "x = 5" → "5"
        text = sides[1]
    text = _fix_sqrt(text).replace(" ", "")
    text = _fix_fracs(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _fix_a_slash_b(text)


# -------------------------------------------------------------------------------------- the sympy normaliser
def _strip_formatted_commas(text: str) -> str:
    """``1,000,000`` → ``1000000`` (only commas that group three digits)."""
    while True:
        stripped = _FORMATTED_COMMA.sub(r"\1\3\4", text)
        if stripped == text:
            return text
        text = stripped


def _str_is_int(text: str) -> bool:
    try:
        value = float(_strip_formatted_commas(text))
    except (ValueError, OverflowError):
        return False
    return abs(value - round(value)) <= 1e-7


def _latex_to_text(text: str) -> str:
    from pylatexenc.latex2text import LatexNodes2Text

    text = text.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    text = LatexNodes2Text().latex_to_text(text)
    for old, new in (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*")):
        text = text.replace(old, new)
    return text.strip()


def sympy_normalize(answer: str | None) -> str | None:
    """The second normaliser: units, dollars and percent signs, ``1 million``, one outer brace pair, LaTeX to text,
    mixed numbers (``7 3/4`` → ``7+3/4``), no spaces or braces, lower case, integers as integers."""
    if answer is None:
        return None
    text = answer
    whole_text = re.search(r"^\\text\{(?P<text>.+?)\}$", text)
    if whole_text:
        text = whole_text.group("text")
    text = text.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "")
    text = text.replace(" or ", " , ").replace(" and ", " , ")
    for word, power in (("million", "6"), ("billion", "9"), ("trillion", "12")):
        text = text.replace(word, f"*10^{power}")
    for pattern in _UNIT_PATTERNS:
        text = pattern.sub("", text)
    text = re.sub(r"\^ *\\circ", "", text)
    if text and text[0] == "{" and text[-1] == "}":
        text = text[1:-1]
    text = re.sub(r",\\! *", "", text)
    try:
        if float(text) == int(round(float(text))):
            text = str(int(round(float(text))))
    except (ValueError, OverflowError):
        pass
    if "\\" in text:
        try:
            text = _latex_to_text(text)
        except Exception:
            pass
    text = re.sub(r"- *", "-", text)
    text = re.sub(r"([0-9]) +([0-9])", r"\1+\2", text)  # a mixed number
    text = text.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _str_is_int(text):
        text = str(int(round(float(_strip_formatted_commas(text)))))
    return text


def split_tuple(text: str) -> list[str]:
    """``(1,2)`` / ``[a,b]`` → its elements; anything else → itself alone."""
    text = _strip_formatted_commas(text)
    if not text:
        return []
    brackets = "()[]"
    if len(text) > 2 and text[0] in brackets and text[-1] in brackets and not any(c in text[1:-1] for c in brackets):
        return [element.strip() for element in text[1:-1].split(",")]
    return [text]


def _may_evaluate(expression: str) -> bool:
    """Only small expressions go to sympy: at most two distinct letters (sqrt and frac aside), no towers of powers."""
    letters = {c for c in expression.replace("sqrt", "").replace("frac", "") if c.isalpha()}
    return len(letters) <= 2 and not any(p.search(expression) for p in _BAD_POWERS)


def _equal_under_sympy(gold: str, given: str) -> bool:
    import sympy
    from sympy.parsing import sympy_parser

    expression = f"({gold})-({given})"
    if not _may_evaluate(expression):
        return False
    try:
        transformations = sympy_parser.standard_transformations + (sympy_parser.implicit_multiplication_application,)
        difference = sympy_parser.parse_expr(expression.replace("^", "**"), transformations=transformations)
        return sympy.simplify(difference) == 0
    except Exception:
        return False


def sympy_equal(given: str, gold: str) -> bool:
    """Equal after `sympy_normalize`, element by element for tuples: fractions exactly, integers only to integers,
    the rest when sympy simplifies their difference to 0."""
    gold_norm, given_norm = sympy_normalize(gold), sympy_normalize(given)
    if gold_norm is None:
        return False
    if gold_norm == given_norm:
        return True
    if not given_norm:
        return False
    gold_elements, given_elements = split_tuple(gold_norm), split_tuple(given_norm)
    if len(gold_elements) > 1 and (gold_norm[0] != given_norm[0] or gold_norm[-1] != given_norm[-1]):
        return False  # (a, b) is not [a, b]
    if len(gold_elements) != len(given_elements):
        return False
    for gold_element, given_element in zip(gold_elements, given_elements, strict=True):
        if _FRACTION.match(gold_element) and _FRACTION.match(given_element):
            if gold_element != given_element:  # 2/4 is not 1/2: an unreduced fraction is not the answer
                return False
        elif _str_is_int(gold_element) != _str_is_int(given_element):
            return False
        elif not _equal_under_sympy(gold_element, given_element):
            return False
    return True


def latex_equal(given: str, gold: str) -> bool:
    """Math-Verify on both strings as LaTeX (each wrapped in ``$…$``), the grader's last test."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    if sympy_normalize(given) == sympy_normalize(gold):
        return True
    config = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())

    def parsed(text: str):
        text = text if "$" in text else f"${text}$"
        return parse(text, config, fallback_mode="no_fallback", extraction_mode="first_match", parsing_timeout=None)

    try:
        return bool(verify(parsed(gold), parsed(given), timeout_seconds=None))
    except Exception:
        return False


def boxed_reward(response: str, gold: str) -> bool:
    """The released grader's verdict (``boxed_reward_fn(response, gold, fast=False)``)."""
    answer = extract_answer(response)
    if answer is None:
        return False
    if "\\boxed" in gold:
        gold = extract_answer(gold) or gold
    return mathd_normalize(answer) == mathd_normalize(gold) or sympy_equal(answer, gold) or latex_equal(answer, gold)
