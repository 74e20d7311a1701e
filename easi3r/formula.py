"""A small, safe expression language for mask rules.

A mask rule combines named per-frame maps (``src_mean``, ``src_std``, ``ref_mean``, ``ref_std`` and
whatever a capture strategy adds; tensors of one shape such as ``(T, NH, NW)``) into one map. The rule is a
formula string in the recipe, so a new backbone needs a new formula, not new code (``method.md`` §4)::

    frame_minmax((1 - src_mean) * src_std * ref_mean * (1 - ref_std))

The text is tokenised and parsed by hand into a tree of frozen dataclasses and evaluated by walking that
tree. User text never reaches Python's ``eval``/``exec``/``compile`` or ``getattr``: a name can only be
looked up in the mapping of maps given to :meth:`Formula.evaluate`, and a call only in :data:`FUNCTIONS`.

Grammar, loosest binding first (every binary operator is left-associative unless noted)::

    expr    := or
    or      := and ('|' and)*                      0/1 result: either operand non-zero
    and     := compare ('&' compare)*              0/1 result: both operands non-zero
    compare := sum (('<'|'<='|'>'|'>='|'=='|'!=') sum)?    0/1 result; chains are an error
    sum     := product (('+'|'-') product)*
    product := unary (('*'|'/') unary)*
    unary   := ('-'|'+')* power
    power   := atom ('**' unary)?                  right-associative: 2**3**2 == 512, -2**2 == -4
    atom    := NUMBER | NAME | NAME '(' [expr (',' expr)*] ')' | '(' expr ')'

    NUMBER  := 12 | 1.5 | .5 | 1. | 1e-6 | 2.5E+3     (always a float)
    NAME    := [A-Za-z_][A-Za-z0-9_]*

Unlike Python, ``&`` and ``|`` bind *looser* than comparisons, so ``a > 0.5 & b < 0.2`` means
``(a > 0.5) & (b < 0.2)``. ``^`` is rejected with a hint to use ``**`` (in Python it is xor, so accepting it
as a power would silently mean something else to half the readers). There are no attributes, subscripts,
strings, keywords or lambdas: ``.`` only appears inside numbers.

Values follow torch's broadcasting and type promotion; constants take the dtype and device of the maps.
:meth:`Formula.evaluate` computes division by zero as torch does (``inf``/``nan``); the checks below refuse
such results in a mask rule. For ``& | where`` a value is true when non-zero (NaN included). Formulas longer
than :data:`MAX_LENGTH` or nested deeper than :data:`MAX_DEPTH` are rejected. Every problem is a
:class:`~easi3r.errors.FormulaError` with a one-line message; one about a token gives its column and marks it::

    formula error at column 6: unknown name 'src_maen' (did you mean 'src_mean'?; ...): (1 - [[src_maen]]) ...

A mask rule is checked before it costs anything. :func:`check_rule`, called by
:func:`easi3r.recipes.validate_recipe` (so by ``easi3r validate`` and by every run before frames or weights
are loaded), parses ``rule.formula`` and then:

* statically (:meth:`Formula.check_static`): every name is a map the aggregation produces; at least one map
  is read (``0/0``, ``minmax(1)`` give no per-frame map); no part that reads no map is non-finite (``0/0``,
  ``log(0)``, ``1e39``, which is inf in float32, the maps' dtype); no division by a constant zero
  (``src_mean / 0``);
* on sample maps (:func:`easi3r.maps.sample_frame_maps`: seeded random attention through
  the real aggregation, so names, shapes and ranges are those of real maps, e.g. fused maps hold an exact
  0): the result must be one finite value per frame token, ``(T, NH, NW)``. ``log(src_std)``,
  ``log(src_std - 0.5)``, ``exp(1e30 * src_mean)`` and a bare ``src_mean_raw`` are refused here. The
  samples have 2 channels where a network has many (``layer * heads + head``), so ``channel(x, i)`` wraps
  ``i`` around them here: ``channel(src_mean_raw, 100)`` is valid for a recipe, and refused, naming the
  valid range, when the video's maps turn out to have fewer channels.

What depends on the video is checked on its own maps, right after the rule combines them and before
refinement, thresholding or pass 2 (:meth:`Formula.check_result` in the ``formula`` rule itself):
``log(mean_channels(src_std_raw))`` is finite on the samples but ``-inf`` on a 2-frame video, whose frames
have one pair per side, so a std of 0. A non-finite value is never legitimate there: the maps themselves are
always finite (the reference's NaN std of a single pair is 0 here, ``maps.single_pair_std``), so NaN or
inf in the rule's map comes from the formula. Likewise ``channel(x, i)`` with ``i`` beyond the video's
channels is refused there.

The index of ``channel(x, i)`` selects, so it cannot depend on the maps: it must be written as a whole
number >= 0 (``5``, ``5.`` or ``5e0``), which the parser checks.
"""

from __future__ import annotations

import difflib
import numbers
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from easi3r.errors import FormulaError
from easi3r.normalize import frame_minmax, minmax

__all__ = [
    "EASI3R_RULE",
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "Binary",
    "Call",
    "Compare",
    "Formula",
    "FunctionSpec",
    "Name",
    "Node",
    "Number",
    "Unary",
    "check_rule",
    "evaluate",
    "parse",
]

EASI3R_RULE = "frame_minmax((1 - src_mean) * src_std * ref_mean * (1 - ref_std))"
"""The reference's dynamic map (``method.md`` §4): low source mean, high source spread, high reference mean,
low reference spread; then min-max per frame."""

MAX_LENGTH = 2000
"""Longest formula accepted, in characters."""

MAX_DEPTH = 64
"""Deepest nesting accepted (parentheses, calls, exponents, chained operators): keeps the recursive parser
and evaluator far from Python's recursion limit whatever the text."""

# ----------------------------------------------------------------------------------------------- functions


def _mean_channels(x: Tensor) -> Tensor:
    return x.mean(dim=-1) if x.ndim == 4 else x


def _channel_count(x: Tensor) -> int:
    """The channel count of a 4-D (T, NH, NW, C) map; a ValueError (a formula error) for any other."""
    if x.ndim != 4:
        raise ValueError(f"channel() needs a 4-D (T, NH, NW, C) map such as src_mean_raw, got {x.ndim}-D")
    return x.shape[-1]


def _channel(x: Tensor, index: Tensor) -> Tensor:
    channels, i = _channel_count(x), int(index)
    if i >= channels:
        raise ValueError(f"channel {i} is out of range: this map has channels 0 to {channels - 1}")
    return x[..., i]


def _channel_on_samples(x: Tensor, index: Tensor) -> Tensor:
    # Sample maps have fewer channels than a real network (2 against e.g. 144), and the real count is only
    # known once pass 1 has run: wrap the index so a channel the video has is not refused for the samples'
    # sake. The range is checked on the video's maps (_channel).
    return x[..., int(index) % _channel_count(x)]


@dataclass(frozen=True)
class FunctionSpec:
    """One whitelisted function: parameter names (their count is the arity), implementation, one-line doc.

    ``index``: the position of a parameter that selects (a channel) and so must be a non-negative whole
    number written in the formula, checked when it is parsed. ``on_samples``: the implementation used on
    sample maps (:func:`check_rule`), when their sizes cannot stand for the video's; ``impl`` if None.
    """

    params: tuple[str, ...]
    impl: Callable[..., Tensor]
    doc: str
    index: int | None = None
    on_samples: Callable[..., Tensor] | None = None

    def signature(self, name: str) -> str:
        """``name(p1, p2)``, as shown in docs and error messages."""
        return f"{name}({', '.join(self.params)})"


FUNCTIONS: Mapping[str, FunctionSpec] = MappingProxyType(
    {
        "abs": FunctionSpec(("x",), torch.abs, "absolute value"),
        "channel": FunctionSpec(
            ("x", "i"),
            _channel,
            "channel i (a whole number >= 0, c = layer * heads + head) of a 4-D (T, NH, NW, C) map",
            index=1,
            on_samples=_channel_on_samples,
        ),
        "clip": FunctionSpec(
            ("x", "lo", "hi"),
            lambda x, lo, hi: torch.minimum(torch.maximum(x, lo), hi),
            "x limited to [lo, hi], i.e. min(max(x, lo), hi)",
        ),
        "exp": FunctionSpec(("x",), torch.exp, "e to the power x"),
        "frame_minmax": FunctionSpec(
            ("x",),
            frame_minmax,
            "min-max per frame over all axes but the first: (x - min_t) / (max_t - min_t + 1e-6)",
        ),
        "log": FunctionSpec(("x",), torch.log, "natural logarithm (log 0 = -inf)"),
        "max": FunctionSpec(("a", "b"), torch.maximum, "element-wise maximum"),
        "mean_channels": FunctionSpec(
            ("x",),
            _mean_channels,
            "mean over the last axis of a 4-D (T, NH, NW, C) map; other maps unchanged",
        ),
        "min": FunctionSpec(("a", "b"), torch.minimum, "element-wise minimum"),
        "minmax": FunctionSpec(
            ("x",), minmax, "min-max over the whole tensor: (x - min) / (max - min + 1e-6)"
        ),
        "pow": FunctionSpec(("a", "b"), torch.pow, "a to the power b, same as a ** b"),
        "sigmoid": FunctionSpec(("x",), torch.sigmoid, "logistic function 1 / (1 + exp(-x))"),
        "sqrt": FunctionSpec(("x",), torch.sqrt, "square root (negative x gives nan)"),
        "where": FunctionSpec(
            ("cond", "a", "b"),
            lambda cond, a, b: torch.where(cond != 0, a, b),
            "a where cond is non-zero, else b",
        ),
    }
)
"""The whitelist of callable functions, name → :class:`FunctionSpec`; nothing else can be called."""


# ----------------------------------------------------------------------------------------------- syntax tree
@dataclass(frozen=True)
class Number:
    """A numeric literal. ``col`` (1-based) and the token's width locate it in the source for errors."""

    value: float
    col: int
    width: int


@dataclass(frozen=True)
class Name:
    """A map looked up in the mapping given at evaluation time."""

    name: str
    col: int


@dataclass(frozen=True)
class Unary:
    """Prefix ``-`` or ``+``."""

    op: str
    operand: Node
    col: int


@dataclass(frozen=True)
class Binary:
    """Arithmetic ``+ - * / **`` or logical ``& |`` (0/1 result)."""

    op: str
    left: Node
    right: Node
    col: int


@dataclass(frozen=True)
class Compare:
    """``< <= > >= == !=`` with a 0/1 result."""

    op: str
    left: Node
    right: Node
    col: int


@dataclass(frozen=True)
class Call:
    """A call of a whitelisted function, arity already checked."""

    func: str
    args: tuple[Node, ...]
    col: int


Node = Number | Name | Unary | Binary | Compare | Call


def _children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Binary | Compare):
        return (node.left, node.right)
    if isinstance(node, Call):
        return node.args
    return ()


def _walk(root: Node) -> Iterator[tuple[Node, int]]:
    """Every node with its depth (root = 1), left to right; iterative so any tree is safe to walk."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        stack.extend((child, depth + 1) for child in reversed(_children(node)))


def _width(node: Node) -> int:
    """How many characters to mark in an error about ``node``."""
    if isinstance(node, Number):
        return node.width
    if isinstance(node, Name):
        return len(node.name)
    if isinstance(node, Call):
        return len(node.func)
    return len(node.op)


# ----------------------------------------------------------------------------------------------- errors
def _sanitise(text: str) -> str:
    # Newlines (a YAML block formula), tabs and other control characters would break the one-line message.
    return "".join(ch if ch.isprintable() else " " for ch in text)


def _error(source: str, col: int, width: int, message: str) -> FormulaError:
    """A one-line error: column, message, and an excerpt with the offending token marked ``[[like this]]``."""
    start = col - 1
    end = start + width
    left = max(0, start - 30)
    right = min(len(source), end + 30)
    token = source[start:end] if end > start else "(end)"
    excerpt = (
        ("..." if left > 0 else "")
        + _sanitise(source[left:start])
        + "[["
        + _sanitise(token)
        + "]]"
        + _sanitise(source[end:right])
        + ("..." if right < len(source) else "")
    )
    return FormulaError(f"formula error at column {col}: {message}: {excerpt.strip()}")


def _quote(source: str) -> str:
    """The formula in quotes for a message about all of it; a long one is cut, the message stays short."""
    text = " ".join(_sanitise(source).split())
    return f"'{text}'" if len(text) <= 80 else f"'{text[:77]}...'"


def _first_bad(values: Tensor) -> str:
    """``nan``, ``inf`` or ``-inf``: the first non-finite element, in order."""
    return str(float(values[~torch.isfinite(values)].flatten()[0]))


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{close[0]}'?; " if close else ""


# ----------------------------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class _Token:
    kind: str  # "number", "name", "op" or "end"
    text: str
    col: int


# ASCII classes spelled out: \d and \w would also accept other scripts' digits and letters.
_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER_TAIL = re.compile(r"[A-Za-z0-9_.]+")
_OPERATORS = ("**", "<=", ">=", "==", "!=", "+", "-", "*", "/", "<", ">", "(", ")", ",", "&", "|")
_BAD_CHARACTER_HINTS = {
    "^": "'^' is not an operator; use '**' for powers",
    ".": "'.' is only allowed inside numbers (there is no attribute access)",
    "=": "'=' is not an operator; use '==' to compare",
    "!": "'!' is only allowed in '!='",
    "'": "strings are not part of formulas",
    '"': "strings are not part of formulas",
    "[": "subscripts are not part of formulas",
    "]": "subscripts are not part of formulas",
}


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(source):
        ch = source[i]
        if ch.isspace():
            i += 1
            continue
        number = _NUMBER.match(source, i)
        if number:
            end = number.end()
            # "1e", "1.2.3" or "3x" is one mistyped token, not a number followed by something else.
            tail = _NUMBER_TAIL.match(source, end)
            if tail:
                text = source[i : tail.end()]
                raise _error(source, i + 1, len(text), f"malformed number '{text}'")
            tokens.append(_Token("number", number.group(), i + 1))
            i = end
            continue
        name = _NAME.match(source, i)
        if name:
            tokens.append(_Token("name", name.group(), i + 1))
            i = name.end()
            continue
        op = next((op for op in _OPERATORS if source.startswith(op, i)), None)
        if op is None:
            hint = _BAD_CHARACTER_HINTS.get(ch, "not part of the formula language")
            raise _error(source, i + 1, 1, f"unexpected character {ch!r}: {hint}")
        tokens.append(_Token("op", op, i + 1))
        i += len(op)
    tokens.append(_Token("end", "", len(source) + 1))
    return tokens


# ----------------------------------------------------------------------------------------------- parser
_COMPARISONS = frozenset({"<", "<=", ">", ">=", "==", "!="})
# Binding strength of the binary operators handled by precedence climbing ('**' is handled in _power).
_PRECEDENCE = {"|": 1, "&": 2, **dict.fromkeys(_COMPARISONS, 3), "+": 4, "-": 4, "*": 5, "/": 5}
_WORD_HINTS = {"and": " (use '&')", "or": " (use '|')"}


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the formula"
    return f"{token.kind} '{token.text}'"


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokenize(source)
        self.pos = 0
        self.nesting = 0

    def _peek(self) -> _Token:
        return self.tokens[self.pos]

    def _next(self) -> _Token:
        token = self.tokens[self.pos]
        # The end token is never consumed, so looking ahead after an error path stays in range.
        if token.kind != "end":
            self.pos += 1
        return token

    def _fail(self, token: _Token, message: str) -> FormulaError:
        return _error(self.source, token.col, len(token.text), message)

    def _enter(self, token: _Token) -> None:
        # Parentheses, call arguments and exponents are where the parser recurses; cap them.
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise self._fail(token, f"formula is nested more than {MAX_DEPTH} levels deep")

    def parse(self) -> Node:
        first = self._peek()
        if first.kind == "end":
            raise self._fail(first, "formula is empty")
        root = self._binary(1)
        extra = self._peek()
        if extra.kind != "end":
            if extra.text == ")":
                raise self._fail(extra, "unmatched ')'")
            hint = _WORD_HINTS.get(extra.text, " (missing operator?)")
            raise self._fail(extra, f"unexpected {_describe(extra)} after a complete expression{hint}")
        return root

    def _binary(self, min_precedence: int) -> Node:
        """Precedence climbing: operators binding at least ``min_precedence`` extend ``left``."""
        left = self._unary()
        while True:
            token = self._peek()
            precedence = _PRECEDENCE.get(token.text) if token.kind == "op" else None
            if precedence is None or precedence < min_precedence:
                return left
            self._next()
            # precedence + 1 makes every level left-associative.
            right = self._binary(precedence + 1)
            if token.text in _COMPARISONS:
                after = self._peek()
                if after.kind == "op" and after.text in _COMPARISONS:
                    raise self._fail(after, "comparisons cannot be chained; combine them with '&'")
                left = Compare(token.text, left, right, token.col)
            else:
                left = Binary(token.text, left, right, token.col)

    def _unary(self) -> Node:
        # Prefix signs are collected in a loop (not by recursion), so '------x' costs no stack.
        signs: list[_Token] = []
        while self._peek().kind == "op" and self._peek().text in ("-", "+"):
            signs.append(self._next())
        node = self._power()
        for sign in reversed(signs):
            node = Unary(sign.text, node, sign.col)
        return node

    def _power(self) -> Node:
        base = self._atom()
        token = self._peek()
        if token.kind == "op" and token.text == "**":
            self._next()
            self._enter(token)
            # The exponent may carry a sign (2 ** -1) and recurses for right-associativity.
            exponent = self._unary()
            self.nesting -= 1
            return Binary("**", base, exponent, token.col)
        return base

    def _atom(self) -> Node:
        token = self._next()
        if token.kind == "number":
            return Number(float(token.text), token.col, len(token.text))
        if token.kind == "name":
            if self._peek().text == "(":
                return self._call(token)
            return Name(token.text, token.col)
        if token.text == "(":
            self._enter(token)
            inner = self._binary(1)
            self._expect_close(token)
            self.nesting -= 1
            return inner
        raise self._fail(token, f"expected a number, a name or '(' but found {_describe(token)}")

    def _call(self, name: _Token) -> Call:
        spec = FUNCTIONS.get(name.text)
        if spec is None:
            known = sorted(FUNCTIONS)
            raise self._fail(
                name,
                f"unknown function '{name.text}' ({_suggest(name.text, known)}functions: {', '.join(known)})",
            )
        opening = self._next()
        self._enter(opening)
        args: list[Node] = []
        if self._peek().text != ")":
            args.append(self._binary(1))
            while self._peek().text == ",":
                self._next()
                args.append(self._binary(1))
        self._expect_close(opening)
        self.nesting -= 1
        if len(args) != len(spec.params):
            raise self._fail(
                name,
                f"{spec.signature(name.text)} takes {len(spec.params)} argument"
                f"{'' if len(spec.params) == 1 else 's'} but {len(args)} were given",
            )
        if spec.index is not None:
            self._check_index(f"{spec.signature(name.text)}: {spec.params[spec.index]}", args[spec.index])
        return Call(name.text, tuple(args), name.col)

    def _check_index(self, what: str, arg: Node) -> None:
        """An index selects a channel: it cannot depend on the maps, so it must be a literal whole number."""
        if isinstance(arg, Number) and arg.value.is_integer():
            return
        if isinstance(arg, Unary) and arg.op == "-" and isinstance(arg.operand, Number):
            width = arg.operand.col + arg.operand.width - arg.col  # mark the sign and the number
            raise _error(self.source, arg.col, width, f"{what} must not be negative")
        raise _error(
            self.source, arg.col, _width(arg), f"{what} must be a whole number written out, such as 5"
        )

    def _expect_close(self, opening: _Token) -> None:
        token = self._next()
        if token.text != ")":
            raise self._fail(
                token,
                f"expected ')' to close the '(' at column {opening.col} but found {_describe(token)}",
            )


# ----------------------------------------------------------------------------------------------- evaluation
_ARITHMETIC: Mapping[str, Callable[[Tensor, Tensor], Tensor]] = {
    "+": torch.add,
    "-": torch.sub,
    "*": torch.mul,
    "/": torch.div,
    "**": torch.pow,
}
# Logical and comparison operators give bool tensors, cast to the maps' float dtype so results stay maps.
_LOGICAL: Mapping[str, Callable[[Tensor, Tensor], Tensor]] = {
    "&": lambda a, b: torch.logical_and(a != 0, b != 0),
    "|": lambda a, b: torch.logical_or(a != 0, b != 0),
}
_COMPARE_OPS: Mapping[str, Callable[[Tensor, Tensor], Tensor]] = {
    "<": torch.lt,
    "<=": torch.le,
    ">": torch.gt,
    ">=": torch.ge,
    "==": torch.eq,
    "!=": torch.ne,
}


class _Evaluator:
    def __init__(
        self,
        source: str,
        values: Mapping[str, Tensor],
        dtype: torch.dtype,
        device: torch.device,
        *,
        samples: bool = False,
    ):
        self.source = source
        self.values = values
        self.dtype = dtype
        self.device = device
        self.samples = samples  # sample maps: functions use their on_samples implementation

    def _fail(self, node: Node, message: str) -> FormulaError:
        return _error(self.source, node.col, _width(node), message)

    def value_of(self, node: Node) -> Tensor:
        if isinstance(node, Number):
            return torch.tensor(node.value, dtype=self.dtype, device=self.device)
        if isinstance(node, Name):
            return self.values[node.name]
        return self.apply(node, [self.value_of(child) for child in _children(node)])

    def apply(self, node: Unary | Binary | Compare | Call, operands: list[Tensor]) -> Tensor:
        """The value of an operator or call node given its operands' values."""
        try:
            if isinstance(node, Unary):
                return -operands[0] if node.op == "-" else operands[0]
            if isinstance(node, Compare):
                return _COMPARE_OPS[node.op](*operands).to(self.dtype)
            if isinstance(node, Binary):
                if node.op in _LOGICAL:
                    return _LOGICAL[node.op](*operands).to(self.dtype)
                return _ARITHMETIC[node.op](*operands)
            spec = FUNCTIONS[node.func]
            impl = spec.on_samples if self.samples and spec.on_samples is not None else spec.impl
            return impl(*operands)
        except (RuntimeError, TypeError, ValueError) as exc:
            # Torch reports shape mismatches, bad dtypes and empty reductions this way; keep its first line.
            shapes = " and ".join(str(tuple(t.shape)) for t in operands)
            what = f"{node.func}()" if isinstance(node, Call) else f"'{node.op}'"
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise self._fail(
                node, f"cannot apply {what} to operands of shape {shapes}: {_sanitise(detail)}"
            ) from exc


# ----------------------------------------------------------------------------------------------- public API
@dataclass(frozen=True)
class Formula:
    """A parsed formula: the source text and its syntax tree. Parse once, evaluate on many map sets."""

    source: str
    root: Node

    @property
    def names(self) -> frozenset[str]:
        """The map names the formula reads."""
        return frozenset(node.name for node, _ in _walk(self.root) if isinstance(node, Name))

    def _name_nodes(self) -> list[Name]:
        return [node for node, _ in _walk(self.root) if isinstance(node, Name)]

    def _check_names(self, available: Collection[str]) -> None:
        choices = sorted(map(str, available))
        for node in self._name_nodes():
            if node.name not in available:
                raise _error(
                    self.source,
                    node.col,
                    len(node.name),
                    f"unknown name '{node.name}' ({_suggest(node.name, choices)}"
                    f"available: {', '.join(choices) or 'none'})",
                )

    def check_static(self, available: Collection[str]) -> None:
        """Refuse what is wrong whatever the maps hold: a name not in ``available``, no map name at all,
        a part without maps whose value is not finite, a division by a constant zero."""
        self._check_names(available)
        if not self.names:
            raise FormulaError(
                f"formula error: {_quote(self.source)} reads no map, so it cannot give a per-frame map; "
                f"use at least one of {', '.join(sorted(available))}"
            )
        # Constants are float32 at run time (the maps' dtype), so a number such as 1e39 is already inf.
        self._fold(self.root, _Evaluator(self.source, {}, torch.float32, torch.device("cpu")))

    def _fold(self, node: Node, evaluator: _Evaluator) -> Tensor | None:
        """The value of a part that reads no map, or None; refuses a non-finite one and x / 0."""
        if isinstance(node, Name):
            return None
        if isinstance(node, Number):
            value = evaluator.value_of(node)
            if not torch.isfinite(value):
                raise _error(self.source, node.col, node.width, "number too large: it is inf in float32")
            return value
        operands = [self._fold(child, evaluator) for child in _children(node)]
        if isinstance(node, Binary) and node.op == "/" and operands[0] is None:
            divisor = operands[1]
            if divisor is not None and bool((divisor == 0).all()):
                raise _error(self.source, node.col, 1, "division by zero gives inf or nan")
        if any(operand is None for operand in operands):
            return None
        value = evaluator.apply(node, operands)
        if not torch.isfinite(value).all():
            raise _error(
                self.source, node.col, _width(node), f"this part is {_first_bad(value)} whatever the maps"
            )
        return value

    def check_result(self, result: Tensor, shape: Sequence[int], *, on: str) -> None:
        """Refuse a result that is not a finite per-frame map of ``shape`` (T, NH, NW); ``on`` says which
        maps gave it (e.g. ``"on this video's maps"``), for the message."""
        expected = tuple(shape)
        if tuple(result.shape) != expected:
            hint = (
                "; fuse a *_raw map's channels with mean_channels()"
                if result.ndim == len(expected) + 1
                else ""
            )
            raise FormulaError(
                f"formula error: {_quote(self.source)} gives a map of shape {tuple(result.shape)} {on}, "
                f"not one value per frame token, (T, NH, NW) = {expected}{hint}"
            )
        bad_frames = (~torch.isfinite(result)).reshape(result.shape[0], -1).any(dim=1).nonzero().flatten()
        if len(bad_frames):
            first = int(bad_frames[0])
            raise FormulaError(
                f"formula error: {_quote(self.source)} gives {_first_bad(result[first])} {on}, first in "
                f"frame {first} ({len(bad_frames)} of {result.shape[0]} frames); a mask rule must be finite "
                "everywhere"
            )

    def evaluate(self, maps: Mapping[str, Tensor | float]) -> Tensor:
        """Evaluate on named maps (tensors or plain numbers); raises :class:`FormulaError` on any problem."""
        return self._evaluate(maps, samples=False)

    def _evaluate(self, maps: Mapping[str, Tensor | float], *, samples: bool) -> Tensor:
        self._check_names(maps)
        used = {node.name: maps[node.name] for node in self._name_nodes()}
        for name, value in used.items():
            if not isinstance(value, Tensor | numbers.Real):
                raise FormulaError(
                    f"formula error: map '{name}' is a {type(value).__name__}, expected a tensor or a number"
                )
        # Constants and plain numbers follow the first floating map, so results keep its dtype and device.
        tensors = [value for value in used.values() if isinstance(value, Tensor)]
        floating = [t for t in tensors if t.is_floating_point()]
        like = floating[0] if floating else None
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        device = like.device if like is not None else (tensors[0].device if tensors else torch.device("cpu"))
        values = {
            name: value
            if isinstance(value, Tensor)
            else torch.tensor(float(value), dtype=dtype, device=device)
            for name, value in used.items()
        }
        return _Evaluator(self.source, values, dtype, device, samples=samples).value_of(self.root)


def parse(text: str) -> Formula:
    """Parse a formula; raises :class:`FormulaError` with the column of the first problem."""
    if not isinstance(text, str):
        raise FormulaError(f"formula error: a formula must be text, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise _error(text, MAX_LENGTH + 1, 1, f"formula is longer than {MAX_LENGTH} characters")
    root = _Parser(text).parse()
    # Chains such as a + b + ... build deep trees without parser recursion; the evaluator recurses on them.
    for node, depth in _walk(root):
        if depth > MAX_DEPTH:
            raise _error(text, node.col, _width(node), f"formula is nested more than {MAX_DEPTH} levels deep")
    return Formula(text, root)


def check_rule(text: str, maps: Mapping[str, Tensor], shape: Sequence[int]) -> Formula:
    """Parse a mask formula and refuse one that cannot give a finite per-frame map, before a run pays for
    frames and weights: :meth:`Formula.check_static`, then an evaluation on ``maps``, sample maps with the
    names, shapes and value ranges of the real ones, whose result must be a finite map of ``shape``.

    Sample maps have fewer channels than a network, so ``channel(x, i)`` wraps ``i`` around their count
    here; whether the video's maps have channel ``i`` is checked when the rule reads them."""
    formula = parse(text)
    formula.check_static(maps)
    formula.check_result(
        formula._evaluate(maps, samples=True), shape, on="on sample maps made like real ones"
    )
    return formula


def evaluate(text: str, maps: Mapping[str, Tensor | float]) -> Tensor:
    """Parse and evaluate in one call (parse once with :func:`parse` to evaluate many times)."""
    return parse(text).evaluate(maps)
