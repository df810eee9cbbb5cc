"""The API server's static cost estimate of a CRD's CEL rules, and the limits it holds them to.

When a CustomResourceDefinition is created, apiextensions-apiserver compiles every
``x-kubernetes-validations`` rule against the schema of its node and estimates the rule's worst
cost (cel-go checker/cost.go, with Kubernetes' size estimator, apiserver/pkg/cel/library/cost.go
and apiextensions-apiserver/pkg/apiserver/schema/cel/compilation.go). A rule whose cost times the
number of times it can run in one object exceeds ``STATIC_ESTIMATED_COST_LIMIT``, or a CRD whose
rules add up to more than ``STATIC_ESTIMATED_CRD_COST_LIMIT``, is refused.

This module mirrors that estimate for the maximum (the only bound the API server checks):

- sizes come from the schema as Kubernetes' ``SchemaDeclType`` derives them: a string's
  ``maxLength`` times 4 (a rune may take 4 bytes), the longest value of an enum, 32 for a
  date-time, ``maxItems``/``maxProperties`` for lists and maps, and without a bound the most
  that fits in a 3 MiB request; objects, numbers and map keys have size 0 as in Kubernetes;
- costs follow cel-go: 1 per identifier, field selection and presence test, 0 per literal, 10
  to create a list and 30 a map, string traversal at 0.1 per character (equality and ordering of
  strings, lists and maps cost the smaller operand's size times 0.1, ``startsWith``,
  ``endsWith``, ``contains``, concatenation), ``matches`` at ``(len + 1) * 0.1`` times
  ``len(regex) * 0.25``, ``in`` on a list its size, comprehensions (``all``, ``exists``,
  ``exists_one``, ``map``, ``filter``) the range's size times the loop's cost, and 1 for every
  other call;
- a rule's cardinality is the product of ``maxItems``/``maxProperties`` of the lists and maps
  above it, or, below an unbounded one, how many copies of its node fit in a request.

Where this differs from Kubernetes it errs high, never low: presence tests always cost 1 (newer
environments may make them free), and the global ``matches(s, re)`` and the quantity functions
are costed like string traversals. A function without a cost model here is an error, not a
guess, so every rule of the CRD is either estimated or the test fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tests.unit.operator.cel_syntax import (
    Call,
    Comprehension,
    CreateList,
    CreateMap,
    Ident,
    Literal,
    Select,
    parse,
)

# k8s.io/apiserver/pkg/apis/cel/config.go
PER_CALL_LIMIT = 1_000_000
RUNTIME_CEL_COST_BUDGET = 10_000_000
MAX_REQUEST_SIZE_BYTES = 3 * 1024 * 1024
# k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation/validation.go
STATIC_ESTIMATED_COST_LIMIT = 10_000_000
STATIC_ESTIMATED_CRD_COST_LIMIT = 100_000_000
# cel-go common/cost.go
STRING_TRAVERSAL_COST_FACTOR = 0.1
REGEX_STRING_LENGTH_COST_FACTOR = 0.25
LIST_CREATE_BASE_COST = 10
MAP_CREATE_BASE_COST = 30
# k8s.io/apiserver/pkg/cel/limits.go
MAX_DATETIME_SIZE_JSON = 32
MAX_DURATION_SIZE_JSON = 32
JSON_DATE_SIZE = 12

UNBOUNDED = 2**64 - 1  # cel-go saturates every sum and product at MaxUint64
_SCALARS = {"bool", "int", "uint", "double", "timestamp", "duration"}
_MAP_KEY = {"type": "string", "x-map-key": True}  # Kubernetes declares map keys with no size
_METADATA = {"type": "object", "properties": {"name": {"type": "string"}, "generateName": {"type": "string"}}}
# Calls that cost 1 plus their arguments (cel-go's default for O(1) functions).
_CONSTANT_TIME = {"!_", "-_", "_-_", "_*_", "_/_", "_%_", "@not_strictly_false", "size", "int", "uint", "double"}
_CONSTANT_TIME |= {"bool", "type", "duration", "timestamp", "dyn"}
_CONSTANT_TIME |= {f"get{part}" for part in ("FullYear", "Month", "DayOfYear", "DayOfMonth", "DayOfWeek")}
_CONSTANT_TIME |= {f"get{part}" for part in ("Date", "Hours", "Minutes", "Seconds", "Milliseconds")}
# Calls that traverse their string operand once (Kubernetes' library/cost.go).
_TRAVERSALS = {"lowerAscii", "upperAscii", "trim", "substring", "url", "isURL", "quantity", "isQuantity"}
_TRAVERSALS |= {"ip", "isIP", "cidr", "isCIDR"}


def _add(*values: int) -> int:
    return min(sum(values), UNBOUNDED)


def _multiply(a: int, b: int) -> int:
    return min(a * b, UNBOUNDED)


def _factor(size: int, factor: float) -> int:
    return min(math.ceil(size * factor), UNBOUNDED)


def _is_map(node: dict) -> bool:
    return node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict)


def min_serialized_size(node: dict) -> int:
    """The fewest bytes a value of ``node`` takes in JSON (SchemaDeclType's MinSerializedSize)."""
    if node.get("x-kubernetes-int-or-string"):
        return 1
    kind = node.get("type")
    if kind == "object" and not _is_map(node):
        required = set(node.get("required", []))
        return 2 + sum(
            len(name) + min_serialized_size(child) + 4
            for name, child in node.get("properties", {}).items()
            if name in required and "default" not in child
        )
    if kind == "string":
        return {"date-time": 21, "date": 12, "duration": 3}.get(node.get("format"), 2)
    return {"array": 2, "object": 2, "boolean": 4, "number": 1, "integer": 1}[kind]


def max_elements(node: dict) -> int:
    """The size Kubernetes' estimator gives a value of ``node`` (DeclType.MaxElements)."""
    room = MAX_REQUEST_SIZE_BYTES - 2
    if node.get("x-kubernetes-int-or-string"):
        return node["maxLength"] * 4 if "maxLength" in node else room
    kind = node.get("type")
    if kind == "array":
        return node.get("maxItems", room // (min_serialized_size(node["items"]) + 1))
    if _is_map(node):
        return node.get("maxProperties", room // (min_serialized_size(node["additionalProperties"]) + 6))
    if kind != "string" or node.get("x-map-key"):
        return 0
    fmt = node.get("format")
    if fmt == "byte":
        return node.get("maxLength", room)
    if fmt in ("date-time", "date", "duration"):
        return {"date-time": MAX_DATETIME_SIZE_JSON, "date": JSON_DATE_SIZE, "duration": MAX_DURATION_SIZE_JSON}[fmt]
    if "maxLength" in node:
        return node["maxLength"] * 4
    if "enum" in node:
        return max(len(value) for value in node["enum"])
    return room


def _kind_of(node: dict) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "dyn"
    kind = node["type"]
    if kind == "string":
        return {"date-time": "timestamp", "date": "timestamp", "duration": "duration", "byte": "bytes"}.get(
            node.get("format"), "string"
        )
    if kind == "object":
        return "map" if _is_map(node) else "object"
    return {"array": "list", "integer": "int", "number": "double", "boolean": "bool"}[kind]


@dataclass(frozen=True)
class _Type:
    """The static type of an expression; ``schema`` is its node when the expression is reached
    from ``self`` through fields, items and values (cel-go's field path)."""

    kind: str
    schema: dict | None = None
    path: bool = True  # False below a map value selected as a field: the estimator finds no size there
    elem: _Type | None = None  # for lists and maps built in the expression
    elem_size: int | None = None


def _of_schema(node: dict, path: bool = True) -> _Type:
    return _Type(_kind_of(node), node, path)


def _element(container: _Type, keys: bool = False) -> tuple[_Type, int | None]:
    """The type and size of a container's items, values or (``keys``) map keys."""
    if container.schema is not None:
        if container.kind == "map" and keys:
            return _Type("string", _MAP_KEY, container.path), 0 if container.path else None
        node = container.schema["items"] if container.kind == "list" else container.schema["additionalProperties"]
        elem = _of_schema(node, container.path)
        return elem, _size_of(elem, None)
    return container.elem or _Type("dyn"), container.elem_size


def _size_of(typ: _Type, computed: int | None) -> int | None:
    """cel-go's computeSize: a computed size, else the estimator's size from the field path,
    else 1 for scalars; None when unknown."""
    if computed is not None:
        return computed
    if typ.schema is not None and typ.path:
        return max_elements(typ.schema)
    return 1 if typ.kind in _SCALARS else None


@dataclass(frozen=True)
class _Estimate:
    cost: int
    type: _Type
    size: int | None = None

    @property
    def max_size(self) -> int:
        return UNBOUNDED if self.size is None else self.size


@dataclass
class _Coster:
    scopes: dict[str, list[tuple[_Type, int | None]]] = field(default_factory=dict)

    def cost(self, expr: object) -> _Estimate:
        if isinstance(expr, Literal):
            return self.literal(expr)
        if isinstance(expr, Ident):
            if not self.scopes.get(expr.name):
                raise NameError(f"undeclared reference to {expr.name!r}")
            typ, size = self.scopes[expr.name][-1]
            return _Estimate(1, typ, _size_of(typ, size))
        if isinstance(expr, Select):
            return self.select(expr)
        if isinstance(expr, Call):
            return self.call(expr)
        if isinstance(expr, CreateList):
            items = [self.cost(e) for e in expr.elements]
            elem = items[0].type if items else None
            elem_size = max((i.max_size for i in items), default=0)
            typ = _Type("list", elem=elem, elem_size=elem_size)
            return _Estimate(_add(LIST_CREATE_BASE_COST, *(i.cost for i in items)), typ, len(items))
        if isinstance(expr, CreateMap):
            parts = [self.cost(part) for entry in expr.entries for part in entry]
            values = parts[1::2]
            typ = _Type(
                "map", elem=values[0].type if values else None, elem_size=max((v.max_size for v in values), default=0)
            )
            return _Estimate(_add(MAP_CREATE_BASE_COST, *(p.cost for p in parts)), typ, len(expr.entries))
        if isinstance(expr, Comprehension):
            return self.comprehension(expr)
        raise TypeError(f"no cost model for {expr!r}")

    @staticmethod
    def literal(expr: Literal) -> _Estimate:
        size = len(expr.value) if expr.kind in ("string", "bytes") else 1
        return _Estimate(0, _Type(expr.kind), size)

    def select(self, expr: Select) -> _Estimate:
        operand = self.cost(expr.operand)
        typ = operand.type
        if typ.kind == "object":
            properties = typ.schema.get("properties", {}) if typ.schema is not None else {}
            if expr.field not in properties:
                raise AttributeError(f"undefined field {expr.field!r}")
            child = _of_schema(properties[expr.field], typ.path)
        elif typ.kind == "map":
            value, _ = _element(typ)
            child = _Type(value.kind, value.schema, False, value.elem, value.elem_size)
        elif typ.kind == "dyn":
            child = _Type("dyn")
        else:
            raise TypeError(f"cannot select {expr.field!r} on a {typ.kind}")
        if expr.test_only:
            return _Estimate(_add(operand.cost, 1), _Type("bool"), 1)
        step = 1 if typ.kind in ("object", "map") else 0
        return _Estimate(_add(operand.cost, step), child, _size_of(child, None))

    def comprehension(self, expr: Comprehension) -> _Estimate:
        iter_range = self.cost(expr.iter_range)
        init = self.cost(expr.accu_init)
        self.scopes.setdefault(expr.accu_var, []).append((init.type, init.size))
        kind = iter_range.type.kind
        if kind not in ("list", "map", "dyn"):
            raise TypeError(f"cannot iterate over a {kind}")
        elem, elem_size = _element(iter_range.type, keys=kind == "map")
        self.scopes.setdefault(expr.iter_var, []).append((elem, elem_size))
        step = self.cost(expr.loop_step)
        loop = _add(self.cost(expr.loop_condition).cost, step.cost)
        self.scopes[expr.iter_var].pop()
        result = self.cost(expr.result)
        self.scopes[expr.accu_var].pop()
        cost = _add(iter_range.cost, init.cost, result.cost, _multiply(iter_range.max_size, loop))
        if isinstance(expr.accu_init, CreateList | CreateMap):
            return _Estimate(cost, _Type("list", elem=step.type.elem, elem_size=step.type.elem_size), iter_range.size)
        return _Estimate(cost, result.type, init.size)

    def call(self, expr: Call) -> _Estimate:
        name = expr.function
        target = self.cost(expr.target) if expr.target is not None else None
        args = [self.cost(a) for a in expr.args]
        base = target.cost if target is not None else 0
        arguments = _add(base, *(a.cost for a in args))
        operands = ([target] if target is not None else []) + args
        if name in ("_&&_", "_||_"):
            return _Estimate(arguments, _Type("bool"), 1)
        if name == "_?_:_":
            size = None if args[1].size is None or args[2].size is None else max(args[1].size, args[2].size)
            return _Estimate(_add(args[0].cost, max(args[1].cost, args[2].cost)), args[1].type, size)
        if name in ("_==_", "_!=_") or (
            name in ("_<_", "_<=_", "_>_", "_>=_") and args[0].type.kind in ("string", "bytes")
        ):
            smallest = min(args[0].max_size, args[1].max_size)
            return _Estimate(_add(_factor(smallest, STRING_TRAVERSAL_COST_FACTOR), arguments), _Type("bool"), 1)
        if name in ("_<_", "_<=_", "_>_", "_>=_"):
            return _Estimate(_add(1, arguments), _Type("bool"), 1)
        if name == "@in":
            scan = args[1].max_size if args[1].type.kind in ("list", "dyn") else 1
            return _Estimate(_add(scan, arguments), _Type("bool"), 1)
        if name == "_+_" and args[0].type.kind in ("string", "bytes"):
            size = _add(args[0].max_size, args[1].max_size)
            return _Estimate(_add(_factor(size, STRING_TRAVERSAL_COST_FACTOR), arguments), args[0].type, size)
        if name == "_+_" and args[0].type.kind == "list":
            elem = args[0].type.elem or args[1].type.elem
            sizes = [s for s in (args[0].type.elem_size, args[1].type.elem_size) if s is not None]
            typ = _Type("list", elem=elem, elem_size=max(sizes) if sizes else None)
            return _Estimate(_add(1, arguments), typ, _add(args[0].max_size, args[1].max_size))
        if name == "_+_":
            return _Estimate(_add(1, arguments), args[0].type, _size_of(args[0].type, None))
        if name == "_[_]":
            elem, elem_size = _element(args[0].type)
            return _Estimate(_add(1, arguments), elem, _size_of(elem, elem_size))
        if name == "matches":
            text, regex = operands
            cost = _multiply(
                _factor(_add(text.max_size, 1), STRING_TRAVERSAL_COST_FACTOR),
                _factor(regex.max_size, REGEX_STRING_LENGTH_COST_FACTOR),
            )
            return _Estimate(_add(cost, arguments), _Type("bool"), 1)
        if name in ("startsWith", "endsWith"):
            return _Estimate(_add(_factor(args[0].max_size, STRING_TRAVERSAL_COST_FACTOR), arguments), _Type("bool"), 1)
        if name == "contains":
            cost = _multiply(
                _factor(target.max_size, STRING_TRAVERSAL_COST_FACTOR),
                _factor(args[0].max_size, STRING_TRAVERSAL_COST_FACTOR),
            )
            return _Estimate(_add(cost, arguments), _Type("bool"), 1)
        if name in _TRAVERSALS or (name in ("string", "bytes") and operands[0].type.kind in ("string", "bytes")):
            size = operands[0].max_size
            kind = "bool" if name.startswith("is") else name if name in ("string", "bytes") else "string"
            return _Estimate(_add(_factor(size, STRING_TRAVERSAL_COST_FACTOR), arguments), _Type(kind), size)
        if name in _CONSTANT_TIME or name == "string":
            kind = {"size": "int", "int": "int", "uint": "uint", "double": "double", "bool": "bool"}.get(name)
            typ = operands[0].type if name == "dyn" else _Type(kind or ("string" if name == "string" else "dyn"))
            size = operands[0].size if name == "dyn" else _size_of(typ, None)
            return _Estimate(_add(1, arguments), typ, size)
        raise NotImplementedError(f"no cost model for the CEL function {name!r}: add it from Kubernetes' cost.go")


def with_type_and_object_meta(node: dict) -> dict:
    """A resource root as CEL sees it: apiVersion, kind, metadata.name and metadata.generateName
    are always declared (SchemaDeclType with isResourceRoot)."""
    properties = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": _METADATA}
    return {**node, "properties": {**node.get("properties", {}), **properties}}


def estimate(rule: str, node: dict) -> tuple[int, str]:
    """The estimated worst cost of one evaluation of ``rule`` on a value of ``node``, and the
    kind of its result. Raises SyntaxError, NameError, AttributeError or TypeError where the API
    server's compiler would refuse the rule, NotImplementedError for a function without a cost."""
    self_type = _of_schema(node)
    coster = _Coster({"self": [(self_type, None)], "oldSelf": [(self_type, None)]})
    result = coster.cost(parse(rule))
    return result.cost, result.type.kind


@dataclass(frozen=True)
class RuleCost:
    """One rule of a CRD: where it is, its cost per evaluation, and how often it can run."""

    path: str  # from the schema's root, as the API server names it
    rule: str
    cost: int
    cardinality: int

    @property
    def total(self) -> int:
        return _multiply(self.cost, self.cardinality)


def crd_rule_costs(schema: dict) -> list[RuleCost]:
    """The estimated cost of every x-kubernetes-validations rule of a CRD's openAPIV3Schema."""
    costs: list[RuleCost] = []
    pending: list[tuple[dict, str, int | None]] = [(schema, "", 1)]
    while pending:
        node, path, cardinality = pending.pop()
        declared = with_type_and_object_meta(node) if not path else node
        times = (
            cardinality if cardinality is not None else MAX_REQUEST_SIZE_BYTES // (min_serialized_size(declared) + 1)
        )
        for index, rule in enumerate(node.get("x-kubernetes-validations", [])):
            where = f"{path}.x-kubernetes-validations[{index}].rule".lstrip(".")
            costs.append(RuleCost(where, rule["rule"], estimate(rule["rule"], declared)[0], times))
        for name, child in node.get("properties", {}).items():
            pending.append((child, f"{path}.properties[{name}]", cardinality))
        for key, bound in (("items", "maxItems"), ("additionalProperties", "maxProperties")):
            if isinstance(node.get(key), dict):
                factor = node.get(bound)
                inner = None if cardinality is None or factor is None else _multiply(cardinality, factor)
                pending.append((node[key], f"{path}.{key}", inner))
    return costs
