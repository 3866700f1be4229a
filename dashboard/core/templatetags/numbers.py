"""`{% load numbers %}{{ value|number }}` or `{{ value|number:3 }}`: the one number style
(parity.reports.numbers) in templates."""

from __future__ import annotations

from typing import Any

from django import template

from parity.reports.numbers import number as _number

register = template.Library()


@register.filter
def number(value: Any, digits: int = 4) -> str:
    return _number(value, int(digits))
