"""A parser for CEL expressions, to the abstract syntax that cel-go's checker works on.

The runtime CEL library evaluates rules but exposes no syntax tree, and the tests need one: to
estimate a rule's cost the way the API server does, and to know whether a rule reads ``oldSelf``.
This follows the grammar of the CEL specification (langdef.md) and expands the standard macros
(``has``, ``all``, ``exists``, ``exists_one``, ``map``, ``filter``) exactly as cel-go's
parser/macro.go does, so that the estimator sees the comprehensions the API server costs.
Anything outside the grammar (optional syntax ``?.``, message construction) is a SyntaxError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ACCUMULATOR = "__result__"


@dataclass(frozen=True)
class Literal:
    value: object
    kind: str  # bool, int, uint, double, string, bytes, null


@dataclass(frozen=True)
class Ident:
    name: str


@dataclass(frozen=True)
class Select:
    operand: object
    field: str
    test_only: bool = False  # has(operand.field)


@dataclass(frozen=True)
class Call:
    function: str  # an operator's internal name (_==_, @in, _[_], ...) or a function name
    target: object | None
    args: tuple


@dataclass(frozen=True)
class CreateList:
    elements: tuple


@dataclass(frozen=True)
class CreateMap:
    entries: tuple  # ((key, value), ...)


@dataclass(frozen=True)
class Comprehension:
    iter_var: str
    iter_range: object
    accu_var: str
    accu_init: object
    loop_condition: object
    loop_step: object
    result: object


_TOKEN = re.compile(
    r"""
    (?P<space>\s+|//[^\n]*)
  | (?P<string>[rR]?[bB]?[rR]?(?P<quote>'''|\"\"\"|'|\"))
  | (?P<number>0[xX][0-9a-fA-F]+[uU]?|\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+[uU]?)
  | (?P<ident>[_a-zA-Z][_a-zA-Z0-9]*)
  | (?P<op>\|\||&&|==|!=|<=|>=|[-+*/%!<>?:.,()\[\]{}])
    """,
    re.VERBOSE,
)
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_RESERVED = {"as", "break", "const", "continue", "else", "for", "function", "if", "import", "let", "loop", "package"}
_RESERVED |= {"namespace", "return", "var", "void", "while"}
_BINARY = [
    {"||": "_||_"},
    {"&&": "_&&_"},
    {"<": "_<_", "<=": "_<=_", ">": "_>_", ">=": "_>=_", "==": "_==_", "!=": "_!=_", "in": "@in"},
    {"+": "_+_", "-": "_-_"},
    {"*": "_*_", "/": "_/_", "%": "_%_"},
]


def _unescape(body: str, raw: bool) -> str:
    if raw:
        return body
    out, i = [], 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        code = body[i + 1]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            i += 2
        elif code in "xXuU":
            width = {"x": 2, "X": 2, "u": 4, "U": 8}[code]
            out.append(chr(int(body[i + 2 : i + 2 + width], 16)))
            i += 2 + width
        elif code.isdigit():
            out.append(chr(int(body[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(code)  # \\ \' \" \` \?
            i += 2
    return "".join(out)


def _tokens(text: str) -> list[tuple[str, object]]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise SyntaxError(f"unexpected character {text[position]!r} at {position} in {text!r}")
        kind = match.lastgroup
        if kind == "string":
            quote = match.group("quote")
            prefix = match.group("string")[: -len(quote)]
            end = position + len(match.group("string"))
            while True:
                close = text.find(quote, end)
                if close < 0:
                    raise SyntaxError(f"unterminated string in {text!r}")
                escaped = len(text[end:close]) - len(text[end:close].rstrip("\\"))
                if "r" in prefix.lower() or escaped % 2 == 0:
                    break
                end = close + 1
            body = text[position + len(match.group("string")) : close]
            value = _unescape(body, "r" in prefix.lower())
            tokens.append(("bytes" if "b" in prefix.lower() else "string", value))
            position = close + len(quote)
            continue
        lexeme = match.group(kind)
        position = match.end()
        if kind == "space":
            continue
        if kind == "number":
            if lexeme[-1] in "uU":
                tokens.append(("uint", int(lexeme[:-1], 0)))
            elif lexeme.lower().startswith("0x"):
                tokens.append(("int", int(lexeme, 16)))
            elif any(c in lexeme for c in ".eE"):
                tokens.append(("double", float(lexeme)))
            else:
                tokens.append(("int", int(lexeme)))
        elif kind == "ident" and lexeme in ("true", "false"):
            tokens.append(("bool", lexeme == "true"))
        elif kind == "ident" and lexeme == "null":
            tokens.append(("null", None))
        elif kind == "ident" and lexeme == "in":
            tokens.append(("op", "in"))
        elif kind == "ident" and lexeme in _RESERVED:
            raise SyntaxError(f"reserved word {lexeme!r} in {text!r}")
        else:
            tokens.append((kind, lexeme))
    tokens.append(("end", None))
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self, value: object = None) -> bool:
        kind, lexeme = self.tokens[self.at]
        return kind == "op" and lexeme == value

    def take(self, value: str) -> None:
        if not self.peek(value):
            raise SyntaxError(f"expected {value!r} at token {self.tokens[self.at]} in {self.text!r}")
        self.at += 1

    def expr(self) -> object:
        condition = self.binary(0)
        if self.peek("?"):
            self.take("?")
            if_true = self.binary(0)
            self.take(":")
            return Call("_?_:_", None, (condition, if_true, self.expr()))
        return condition

    def binary(self, level: int) -> object:
        if level == len(_BINARY):
            return self.unary()
        left = self.binary(level + 1)
        while self.tokens[self.at][0] == "op" and self.tokens[self.at][1] in _BINARY[level]:
            function = _BINARY[level][self.tokens[self.at][1]]
            self.at += 1
            left = Call(function, None, (left, self.binary(level + 1)))
        return left

    def unary(self) -> object:
        for symbol, function in (("!", "!_"), ("-", "-_")):
            if self.peek(symbol):
                self.take(symbol)
                operand = self.unary()
                if function == "-_" and isinstance(operand, Literal) and operand.kind in ("int", "double"):
                    return Literal(-operand.value, operand.kind)
                return Call(function, None, (operand,))
        return self.member()

    def arguments(self, close: str) -> tuple:
        items = []
        while not self.peek(close):
            items.append(self.expr())
            if not self.peek(close):
                self.take(",")
        self.take(close)
        return tuple(items)

    def member(self) -> object:
        node = self.primary()
        while True:
            if self.peek("."):
                self.take(".")
                kind, name = self.tokens[self.at]
                if kind != "ident":
                    raise SyntaxError(f"expected a field name after '.' in {self.text!r}")
                self.at += 1
                if self.peek("("):
                    self.take("(")
                    node = _receiver_call(name, node, self.arguments(")"))
                else:
                    node = Select(node, name)
            elif self.peek("["):
                self.take("[")
                index = self.expr()
                self.take("]")
                node = Call("_[_]", None, (node, index))
            else:
                return node

    def primary(self) -> object:
        kind, lexeme = self.tokens[self.at]
        self.at += 1
        if kind in ("bool", "int", "uint", "double", "string", "bytes", "null"):
            return Literal(lexeme, kind)
        if kind == "ident":
            if self.peek("("):
                self.take("(")
                return _global_call(lexeme, self.arguments(")"))
            return Ident(lexeme)
        if kind == "op" and lexeme == "(":
            inner = self.expr()
            self.take(")")
            return inner
        if kind == "op" and lexeme == "[":
            return CreateList(self.arguments("]"))
        if kind == "op" and lexeme == "{":
            entries = []
            while not self.peek("}"):
                key = self.expr()
                self.take(":")
                entries.append((key, self.expr()))
                if not self.peek("}"):
                    self.take(",")
            self.take("}")
            return CreateMap(tuple(entries))
        raise SyntaxError(f"unexpected token {lexeme!r} in {self.text!r}")


def _global_call(name: str, args: tuple) -> object:
    if name == "has":
        if len(args) != 1 or not isinstance(args[0], Select):
            raise SyntaxError("invalid argument to has() macro")
        return Select(args[0].operand, args[0].field, test_only=True)
    return Call(name, None, args)


def _accu() -> Ident:
    return Ident(ACCUMULATOR)


def _receiver_call(name: str, target: object, args: tuple) -> object:
    """A method call, or the comprehension one of CEL's standard macros expands to (cel-go
    parser/macro.go: makeQuantifier, MakeMap, MakeFilter)."""
    macro = {("all", 2), ("exists", 2), ("exists_one", 2), ("map", 2), ("map", 3), ("filter", 2)}
    if (name, len(args)) not in macro:
        return Call(name, target, args)
    if not isinstance(args[0], Ident):
        raise SyntaxError("argument must be a simple name")
    var = args[0].name
    if name == "all":
        init, condition = Literal(True, "bool"), Call("@not_strictly_false", None, (_accu(),))
        step, result = Call("_&&_", None, (_accu(), args[1])), _accu()
    elif name == "exists":
        init = Literal(False, "bool")
        condition = Call("@not_strictly_false", None, (Call("!_", None, (_accu(),)),))
        step, result = Call("_||_", None, (_accu(), args[1])), _accu()
    elif name == "exists_one":
        one = Literal(1, "int")
        init, condition = Literal(0, "int"), Literal(True, "bool")
        step = Call("_?_:_", None, (args[1], Call("_+_", None, (_accu(), one)), _accu()))
        result = Call("_==_", None, (_accu(), one))
    else:  # map and filter build a list
        init, condition, result = CreateList(()), Literal(True, "bool"), _accu()
        appended = CreateList((args[-1],) if name == "map" else (args[0],))
        step = Call("_+_", None, (_accu(), appended))
        if name == "filter" or len(args) == 3:
            step = Call("_?_:_", None, (args[1], step, _accu()))
    return Comprehension(var, target, ACCUMULATOR, init, condition, step, result)


def parse(text: str) -> object:
    """The syntax tree of a CEL expression. Raises SyntaxError."""
    parser = _Parser(text)
    tree = parser.expr()
    if parser.tokens[parser.at][0] != "end":
        raise SyntaxError(f"unexpected {parser.tokens[parser.at][1]!r} in {text!r}")
    return tree


def references(tree: object, name: str) -> bool:
    """Whether the expression reads the variable ``name`` (not a comprehension variable that
    shadows it)."""
    if isinstance(tree, Ident):
        return tree.name == name
    if isinstance(tree, Select):
        return references(tree.operand, name)
    if isinstance(tree, Call):
        return any(references(part, name) for part in (tree.target, *tree.args) if part is not None)
    if isinstance(tree, CreateList):
        return any(references(element, name) for element in tree.elements)
    if isinstance(tree, CreateMap):
        return any(references(part, name) for entry in tree.entries for part in entry)
    if isinstance(tree, Comprehension):
        inner = (tree.loop_condition, tree.loop_step, tree.result)
        shadowed = name in (tree.iter_var, tree.accu_var)
        return (
            references(tree.iter_range, name)
            or references(tree.accu_init, name)
            or (not shadowed and any(references(part, name) for part in inner))
        )
    return False
