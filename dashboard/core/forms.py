"""Forms of the pages.

The job forms are generated from the pydantic specs in `workers.specs`, so a setting, its
default, its bounds and its validation message are defined once, there; this module only
turns them into HTML fields and maps pydantic's errors back onto those fields.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
from django import forms
from django.db.models import F, FloatField, OuterRef, QuerySet, Subquery, Value
from django.db.models.expressions import OrderBy
from django.db.models.functions import Coalesce
from django.http import QueryDict

from dashboard.core.canonical import SUMMARY_KEYS
from dashboard.core.models import MetricPoint, Run
from parity.frameworks import watched_keys
from workers.specs import JOB_KINDS

# --- the runs list ------------------------------------------------------------------------


class RunFilterForm(forms.Form):
    SORTS = {
        "-created": "Newest first",
        "created": "Oldest first",
        "name": "Name",
        "-name": "Name, Z to A",
        "-last_step": "Last step, highest first",
        "last_step": "Last step, lowest first",
        "status": "Status",
        "-status": "Status, reversed",
        "kind": "Kind",
        "-kind": "Kind, reversed",
        **{
            sort: f"Latest {key}, {'highest' if sort[0] == '-' else 'lowest'} first"
            for key in SUMMARY_KEYS
            for sort in ("-" + key, key)
        },
    }

    q = forms.CharField(required=False, label="Name", max_length=200)
    tag = forms.CharField(required=False, label="Tag", max_length=64)
    status = forms.ChoiceField(required=False, choices=[("", "any")] + list(Run.Status.choices))
    kind = forms.ChoiceField(required=False, choices=[("", "any")] + list(Run.Kind.choices))
    sort = forms.ChoiceField(required=False, choices=list(SORTS.items()))

    def filter(self, runs: QuerySet[Run]) -> QuerySet[Run]:
        if not self.is_valid():
            return runs
        data = self.cleaned_data
        if data["q"]:
            runs = runs.filter(name__icontains=data["q"])
        if data["tag"]:
            runs = runs.filter(tags__contains=[data["tag"]])
        if data["status"]:
            runs = runs.filter(status=data["status"])
        if data["kind"]:
            runs = runs.filter(kind=data["kind"])
        sort = data["sort"] or "-created"
        # nulls last: a run that never posted a point sorts after every run that did.
        if sort in ("-last_step", "last_step"):
            return runs.order_by(_nulls_last(F("last_step"), sort), "-created")
        if sort.lstrip("-") in SUMMARY_KEYS:
            latest = _latest_value(sort.lstrip("-"))
            return runs.annotate(sort_value=latest).order_by(
                _nulls_last(F("sort_value"), sort), "-created"
            )
        return runs.order_by(sort, "-created")


def _nulls_last(field: F, sort: str) -> OrderBy:
    return field.desc(nulls_last=True) if sort[0] == "-" else field.asc(nulls_last=True)


def _latest_value(canonical: str) -> Coalesce:
    """A run's latest value of `canonical`, from whichever key gives it (one index probe per
    key and run, as the runs list's cells read it)."""
    probes = [
        Subquery(
            MetricPoint.objects.filter(run=OuterRef("pk"), key=key)
            .order_by("-step")
            .values("value")[:1]
        )
        for key in watched_keys(canonical)
    ]
    return Coalesce(*probes, Value(None, output_field=FloatField()))


# --- forms generated from pydantic specs ------------------------------------------------


@dataclass
class FieldSpec:
    """One leaf setting of a spec: where it lives (`path`) and how to render it."""

    path: tuple[str, ...]
    name: str
    label: str
    help: str
    kind: str  # "bool" | "int" | "float" | "choice" | "multi" | "text" | "json"
    default: Any
    required: bool
    nullable: bool
    choices: list[tuple[str, str]] = field(default_factory=list)
    # A "multi" field's one-line description of each choice, by value.
    choice_help: dict[str, str] = field(default_factory=dict)
    bounds: dict[str, Any] = field(default_factory=dict)
    value: Any = None
    error: str = ""
    # What vLLM itself uses when the setting is not given (workers.specs.vllm_default).
    vllm_default: Any = None
    has_vllm_default: bool = False
    # Never echoed back into the page (a server's API key).
    secret: bool = False

    @property
    def vllm_note(self) -> str:
        """ "vLLM's default" when this field's default is vLLM's own, else what vLLM uses."""
        if not self.has_vllm_default:
            return ""
        if self.default == self.vllm_default:
            return "vLLM's default"
        shown = "unset" if self.vllm_default is None else self.vllm_default
        return f"vLLM: {shown}"

    @property
    def html_value(self) -> str:
        if self.secret:
            return ""
        value = self.default if self.value is None else self.value
        if value is None:
            return ""
        if self.kind == "json":
            # Defaults may be pydantic models (e.g. a replay's weight source).
            return (
                value
                if isinstance(value, str)
                else json.dumps(pydantic_core.to_jsonable_python(value))
            )
        if isinstance(value, enum.Enum):
            return str(value.value)
        return str(value)

    @property
    def options(self) -> list[dict[str, Any]]:
        """A "multi" field's checkboxes: value, label, description and whether it is ticked
        (the submitted selection, else the default)."""
        selected = self.default if self.value is None else self.value
        return [
            {
                "value": value,
                "label": label,
                "help": self.choice_help.get(value, ""),
                "checked": value in (selected or []),
            }
            for value, label in self.choices
        ]

    @property
    def checked(self) -> bool:
        value = self.default if self.value is None else self.value
        return value in (True, "on", "true", "1")


@dataclass
class Section:
    name: str
    label: str
    help: str
    fields: list[FieldSpec]


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            return args[0], nullable
        return annotation, nullable
    return annotation, False


def _is_model(annotation: Any) -> bool:
    import pydantic

    return isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)


def _describe(path: tuple[str, ...], info: Any) -> FieldSpec:
    from pydantic_core import PydanticUndefined

    annotation, nullable = _unwrap_optional(info.annotation)
    default = None if info.default is PydanticUndefined else info.default
    if default is None and info.default_factory is not None:
        try:
            default = info.default_factory()
        except TypeError:
            default = None
    required = info.is_required()
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    choices: list[tuple[str, str]] = []
    choice_help: dict[str, str] = {}
    item = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None
    if typing.get_origin(item) is typing.Literal:
        # A list of fixed choices (the checklist's checks): one checkbox each, with the
        # title and description the spec gives it.
        kind = "multi"
        labels = extra.get("choice_labels") or {}
        for value in typing.get_args(item):
            label, description = labels.get(value, (value, ""))
            choices.append((str(value), str(label)))
            choice_help[str(value)] = str(description)
    elif typing.get_origin(annotation) is typing.Literal:
        kind = "choice"
        choices = [(str(v), str(v)) for v in typing.get_args(annotation)]
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        kind = "choice"
        choices = [(str(m.value), str(m.value)) for m in annotation]
    elif annotation is bool:
        kind = "bool"
    elif annotation is int:
        kind = "int"
    elif annotation is float:
        kind = "float"
    elif annotation is str or (isinstance(annotation, type) and issubclass(annotation, str)):
        kind = "text"
    elif typing.get_origin(annotation) in (typing.Union, types.UnionType) and set(
        typing.get_args(annotation)
    ) <= {int, float}:
        kind = "float"
    else:
        kind = "json"
    if nullable and kind == "choice":
        choices = [("", "— (none)")] + choices
    bounds: dict[str, Any] = {}
    for meta in info.metadata:
        for attr, html in (("ge", "min"), ("gt", "min"), ("le", "max"), ("lt", "max")):
            bound = getattr(meta, attr, None)
            if bound is not None:
                bounds[html] = bound
    label = info.title or path[-1].replace("_", " ")
    return FieldSpec(
        path=path,
        name="__".join(path),
        label=label,
        help=info.description or "",
        kind=kind,
        default=default,
        required=required,
        nullable=nullable,
        choices=choices,
        choice_help=choice_help,
        bounds=bounds,
        vllm_default=extra.get("vllm_default"),
        has_vllm_default="vllm_default" in extra,
        secret=bool(extra.get("secret")),
    )


class SpecForm:
    """An HTML form for a pydantic model: nested models become fieldsets.

    Validation is the model's own: `is_valid()` builds the nested dict from the POST data,
    calls `model_validate`, and puts each error message on the field it names.
    """

    def __init__(
        self,
        model: type[Any],
        data: QueryDict | None = None,
        initial: dict[str, Any] | None = None,
        exclude: tuple[str, ...] = (),
    ) -> None:
        self.model = model
        self.data = data
        self.sections: list[Section] = []
        self.non_field_errors: list[str] = []
        self.spec: Any = None
        top: list[FieldSpec] = []
        for name, info in model.model_fields.items():
            if name in exclude:
                continue
            annotation, _ = _unwrap_optional(info.annotation)
            if _is_model(annotation):
                fields = [
                    _describe((name, sub), sub_info)
                    for sub, sub_info in annotation.model_fields.items()
                ]
                # A spec may default a nested model to other values than the nested
                # model's own defaults (the checklist samples at T=0.7, top_p=0.9).
                parent = info.get_default(call_default_factory=True)
                if isinstance(parent, annotation):
                    for field in fields:
                        field.default = getattr(parent, field.path[-1])
                label = info.title or name.replace("_", " ").capitalize()
                help_text = info.description or (annotation.__doc__ or "").strip().split("\n")[0]
                self.sections.append(Section(name, label, help_text, fields))
            else:
                top.append(_describe((name,), info))
        if top:
            self.sections.insert(0, Section("", "", "", top))
        for spec in self.fields:
            key = ".".join(spec.path)
            if initial and key in initial:
                spec.default = initial[key]
            if data is None:
                continue
            if spec.kind == "multi":
                spec.value = data.getlist(spec.name)  # every ticked box; none sends nothing
            else:
                spec.value = data.get(spec.name, "" if spec.kind != "bool" else None)

    @property
    def fields(self) -> list[FieldSpec]:
        return [f for section in self.sections for f in section.fields]

    def _payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        for spec in self.fields:
            if spec.kind == "bool":
                value: Any = spec.name in self.data
            elif spec.kind == "multi":
                value = spec.value  # an empty selection is the spec's to refuse, in its words
            else:
                raw = (self.data.get(spec.name) or "").strip()
                if raw == "":
                    if spec.nullable:
                        value = None
                    elif not spec.required:
                        continue  # the model's default applies
                    else:
                        value = raw
                elif spec.kind == "json":
                    try:
                        value = json.loads(raw)
                    except json.JSONDecodeError:
                        # Let pydantic judge a plain string (e.g. a path typed without quotes).
                        value = raw
                else:
                    value = raw  # pydantic coerces "0.7" -> 0.7 and reports what it cannot
            node = payload
            for part in spec.path[:-1]:
                node = node.setdefault(part, {})
            node[spec.path[-1]] = value
        return payload

    def is_valid(self, extra: dict[str, Any] | None = None) -> bool:
        import pydantic

        if self.data is None:
            return False
        payload = self._payload()
        if extra:
            payload.update(extra)
        by_name = {spec.path: spec for spec in self.fields}
        try:
            self.spec = self.model.model_validate(payload)
        except pydantic.ValidationError as exc:
            for err in exc.errors():
                loc = tuple(str(part) for part in err["loc"])
                message = err["msg"].removeprefix("Value error, ")
                target = None
                for depth in range(len(loc), 0, -1):
                    target = by_name.get(loc[:depth])
                    if target is not None:
                        break
                if target is not None and not target.error:
                    target.error = message
                else:
                    where = ".".join(loc)
                    self.non_field_errors.append(f"{where}: {message}" if where else message)
            return False
        return True


def spec_model(kind: str) -> type[Any] | None:
    """The pydantic spec of a job kind (workers.specs.kinds), or None for a kind without one
    (ping) or no such kind."""
    job_kind = JOB_KINDS.get(kind)
    return job_kind.spec if job_kind is not None else None
