"""CEL validation rules that the API server and the models enforce alike.

A rule is written once, as the CEL expression the CRD carries in ``x-kubernetes-validations``.
The API server evaluates it when an object is stored; the models evaluate the same expression
with the CEL library when they validate, so ``internvl-operator validate``, the operator and any
object built in Python refuse what the server refuses, with the server's message, at the rule's
field. Rules that compare with the old object (``oldSelf``) only exist in the schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar, Literal

import cel
from pydantic import AfterValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from internvl_trainer.config import Section

Reason = Literal["FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"]


@cache
def _program(expression: str) -> Any:
    return cel.compile(expression)


@dataclass(frozen=True)
class Rule:
    """One ``x-kubernetes-validations`` entry: a CEL expression over ``self`` that must hold."""

    expression: str
    message: str
    field: str | None = None
    """The property of ``self`` the message is about (the rule's fieldPath), in its wire spelling."""
    reason: Reason = "FieldValueInvalid"

    def schema(self) -> dict[str, str]:
        entry = {"rule": self.expression, "message": self.message}
        if self.field is not None:
            entry["fieldPath"] = f".{self.field}"
        return {**entry, "reason": self.reason}

    def holds(self, value: Any) -> bool:
        """Whether the rule holds for ``value`` (the node's wire form, defaults applied)."""
        context = cel.Context()
        context.add_variable("self", value)
        try:
            return _program(self.expression).execute(context) is True
        except Exception:  # the library raises plain exceptions; the API server refuses on an error too
            return False


def schema_rules(*rules: Rule) -> dict[str, Any]:
    """The schema keyword that carries ``rules``."""
    return {"x-kubernetes-validations": [rule.schema() for rule in rules]}


def checked(*rules: Rule) -> tuple[Any, ...]:
    """Metadata for ``Annotated[type, *checked(...)]``: the rules on a field's own schema node,
    and a validator evaluating them on the field's value."""

    def check(value: Any) -> Any:
        for rule in rules:
            if not rule.holds(value):
                raise PydanticCustomError("rule", rule.message)
        return value

    return Field(json_schema_extra=schema_rules(*rules)), AfterValidator(check)


def _with_rules(schema: dict[str, Any], cls: type[RuledSection]) -> None:
    if cls.rules:
        schema.update(schema_rules(*cls.rules))


class RuledSection(Section):
    """A section with CEL rules on its object: ``rules`` go into its schema, and validating the
    section evaluates them on its wire form."""

    model_config = ConfigDict(json_schema_extra=_with_rules)

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _rules_hold(self) -> RuledSection:
        if not self.rules:
            return self
        wire = self.to_wire()
        broken = [
            InitErrorDetails(
                type=PydanticCustomError("rule", rule.message),
                loc=() if rule.field is None else (rule.field,),
                input=wire.get(rule.field) if rule.field else wire,
            )
            for rule in self.rules
            if not rule.holds(wire)
        ]
        if broken:
            raise ValidationError.from_exception_data(type(self).__name__, broken)
        return self
