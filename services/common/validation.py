"""Enforces the input rules the contract declares with `(pingvas.rules.v1.field)` options.

The rules live next to the fields in proto/; this module reads them from the message descriptors
once per message type and checks every request before a servicer sees it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from pingvas.rules.v1 import rules_pb2

from services.common.errors import Violations

# A check of one message at one path; the last argument is the message that holds it (its
# enclosing request), None at the top, for the rules that look there (`waived_by`).
_Check = Callable[[Message, str, Violations, Message | None], None]


def _has_presence(field: FieldDescriptor) -> bool:
    return field.has_presence and not field.is_repeated


def is_set_in(message: Message, name: str) -> bool:
    """Whether `message`'s field `name` holds a value: present, or non-default without presence."""
    field = message.DESCRIPTOR.fields_by_name[name]
    if _has_presence(field):
        return bool(message.HasField(name))
    return bool(getattr(message, name))


def _field_checks(field: FieldDescriptor) -> list[_Check]:
    options = field.GetOptions()
    checks: list[_Check] = []
    rules = options.Extensions[rules_pb2.field] if options.HasExtension(rules_pb2.field) else None
    name = field.name

    def is_set(message: Message) -> bool:
        if _has_presence(field):
            return bool(message.HasField(name))
        value = getattr(message, name)
        return bool(value)

    if rules is not None:

        def waived(container: Message | None) -> bool:
            return (
                container is not None
                and rules.waived_by in container.DESCRIPTOR.fields_by_name
                and is_set_in(container, rules.waived_by)
            )

        def check_string(value: str, path: str, violations: Violations, waive: bool) -> None:
            if rules.HasField("min_len") and len(value) < rules.min_len and not waive:
                violations.add(path, f"must be at least {rules.min_len} characters")
            if rules.HasField("max_len") and len(value) > rules.max_len:
                violations.add(path, f"must be at most {rules.max_len} characters")
            allowed = list(getattr(rules, "in"))  # `in` is a Python keyword
            if allowed and value and value not in allowed:
                violations.add(path, "must be one of " + ", ".join(allowed))

        def check_value(
            message: Message, path: str, violations: Violations, container: Message | None
        ) -> None:
            waive = waived(container)
            if (
                field.is_repeated
                and rules.HasField("max_items")
                and len(getattr(message, name)) > rules.max_items
            ):
                violations.add(path, f"must have at most {rules.max_items} items")
            if not is_set(message):
                if rules.required and not waive:
                    violations.add(path, "is required")
                    return
                # An absent optional field takes its documented default; only values the caller
                # sent are checked.
                if _has_presence(field):
                    return
            value = getattr(message, name)
            if field.type == FieldDescriptor.TYPE_STRING:
                # A repeated string's rules hold for each of its items.
                items = (
                    [(f"{path}[{index}]", item) for index, item in enumerate(value)]
                    if field.is_repeated
                    else [(path, value)]
                )
                for item_path, item in items:
                    check_string(item, item_path, violations, waive)
            elif field.cpp_type in (
                FieldDescriptor.CPPTYPE_INT32,
                FieldDescriptor.CPPTYPE_INT64,
                FieldDescriptor.CPPTYPE_UINT32,
                FieldDescriptor.CPPTYPE_UINT64,
            ):
                if rules.HasField("int_gte") and value < rules.int_gte:
                    violations.add(path, f"must be at least {rules.int_gte}")
                if rules.HasField("int_lte") and value > rules.int_lte:
                    violations.add(path, f"must be at most {rules.int_lte}")
                if rules.HasField("multiple_of") and value % rules.multiple_of:
                    violations.add(path, f"must be a multiple of {rules.multiple_of}")
            elif field.cpp_type in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
                if value != value:  # NaN compares unequal to itself
                    violations.add(path, "must be a number")
                    return
                if rules.HasField("double_gte") and value < rules.double_gte:
                    violations.add(path, f"must be at least {rules.double_gte:g}")
                if rules.HasField("double_lte") and value > rules.double_lte:
                    violations.add(path, f"must be at most {rules.double_lte:g}")

        checks.append(check_value)

    if field.type == FieldDescriptor.TYPE_STRING:
        # Whatever its rules: PostgreSQL's text cannot hold a NUL character, and a string that
        # reaches a query must not fail there as an internal error.
        def check_no_nul(
            message: Message, path: str, violations: Violations, container: Message | None
        ) -> None:
            value = getattr(message, name)
            items = enumerate(value) if field.is_repeated else [(None, value)]
            for index, item in items:
                if "\x00" in item:
                    item_path = path if index is None else f"{path}[{index}]"
                    violations.add(item_path, "must not contain NUL characters")

        checks.append(check_no_nul)

    if field.message_type is not None and not field.message_type.GetOptions().map_entry:
        nested = _message_checks(field.message_type)
        if nested:

            def check_nested(
                message: Message, path: str, violations: Violations, container: Message | None
            ) -> None:
                if field.is_repeated:
                    items = [(f"{path}[{index}]", item) for index, item in enumerate(getattr(message, name))]
                else:
                    items = [(path, getattr(message, name))] if message.HasField(name) else []
                for item_path, sub in items:
                    for nested_check in nested:
                        nested_check(sub, item_path, violations, message)

            checks.append(check_nested)
    return checks


@functools.cache
def _message_checks(descriptor: Descriptor) -> tuple[_Check, ...]:
    checks: list[_Check] = []
    for field in descriptor.fields:
        for check in _field_checks(field):

            def at_field(
                message: Message,
                path: str,
                violations: Violations,
                container: Message | None,
                *,
                _c: _Check = check,
                _f: FieldDescriptor = field,
            ) -> None:
                _c(message, f"{path}.{_f.name}" if path else _f.name, violations, container)

            checks.append(at_field)
    return tuple(checks)


def validate(message: Message) -> None:
    """Raise InvalidInput listing every broken rule of `message` (and its nested messages)."""
    violations = Violations()
    for check in _message_checks(message.DESCRIPTOR):
        check(message, "", violations, None)
    violations.raise_if_any()
