"""What a component's parameters are, read from its params dataclass (``jemkit list-plugins --params``).

A component registers the ``@dataclass`` whose fields are the recipe keys it accepts (see
:mod:`jemkit.registry`). :func:`describe_params` turns that class into :class:`ParamInfo`
records: name, readable type, default (or required) and a one-line doc. The doc comes from, in
order: ``field(metadata={"doc": ...})`` (or ``"help"``), ``#:`` comment lines directly above the
field, a trailing ``#:`` comment on the field's line, or a string literal right after the field
(the conventions Sphinx autodoc reads). Source that cannot be read or parsed just gives no docs:
this module never fails on a valid dataclass.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import io
import json
import math
import tokenize
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

#: Field-metadata keys read as a field's doc, in this order.
DOC_METADATA_KEYS: tuple[str, ...] = ("doc", "help")


@dataclass(frozen=True)
class ParamInfo:
    """One recipe key of a component: ``default`` is meaningful only when not ``required``."""

    name: str
    type: str
    default: Any
    required: bool
    doc: str

    def default_text(self) -> str:
        """The default as a YAML value you could paste into a recipe (``null``, ``true``, ``[1, 2]``), or ``required``."""
        return "required" if self.required else json.dumps(json_value(self.default))

    def to_json(self) -> dict[str, Any]:
        """``{"name", "type", "default", "required", "doc"}``; ``default`` is ``null`` when required."""
        return {
            "name": self.name,
            "type": self.type,
            "default": None if self.required else json_value(self.default),
            "required": self.required,
            "doc": self.doc,
        }


def describe_params(params_cls: type | None) -> list[ParamInfo]:
    """The parameters of ``params_cls`` in field order; ``[]`` for ``None`` (a component without parameters)."""
    if params_cls is None:
        return []
    docs = field_docs(params_cls)
    infos = []
    for f in dataclasses.fields(params_cls):
        required, default = _default(f)
        doc = next((str(f.metadata[k]) for k in DOC_METADATA_KEYS if f.metadata.get(k)), docs.get(f.name, ""))
        infos.append(ParamInfo(f.name, type_name(f.type), default, required, " ".join(doc.split())))
    return infos


def _default(f: dataclasses.Field) -> tuple[bool, Any]:
    """``(required, default)`` of a field; a ``default_factory`` is called to show its value."""
    if f.default is not dataclasses.MISSING:
        return False, f.default
    if f.default_factory is not dataclasses.MISSING:
        try:
            return False, f.default_factory()
        except Exception:  # a factory that cannot run here: say so rather than fail
            return False, "<computed>"
    return True, None


def type_name(annotation: Any) -> str:
    """A readable type: ``int``, ``list[int]``, ``str | None``, ``Optional[float]``.

    String annotations (modules with ``from __future__ import annotations``) are shown as written.
    """
    if isinstance(annotation, str):
        text = " ".join(annotation.split())
    elif annotation is None or annotation is type(None):
        text = "None"
    elif isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        text = annotation.__qualname__
    else:
        text = str(annotation)
    return text.replace("typing.", "")


def json_value(value: Any) -> Any:
    """``value`` as plain JSON data: enums by name, paths and unknown objects as strings, no NaN."""
    if isinstance(value, enum.Enum):  # before int/str: IntEnum and StrEnum are both
        return value.name
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [json_value(v) for v in items]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return repr(value)


# --------------------------------------------------------------------------- docs from source


def field_docs(cls: type) -> dict[str, str]:
    """``{field name: doc}`` from the source of ``cls`` and its bases (a subclass's doc wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is not object:
            docs.update(_class_field_docs(klass))
    return docs


def _class_field_docs(klass: type) -> dict[str, str]:
    try:
        lines = inspect.getsource(klass).splitlines()
        indent = len(lines[0]) - len(lines[0].lstrip())
        # Strip the class's own indentation (nested classes); string continuation lines may be
        # less indented, which ``textwrap.dedent`` would trip over.
        source = "\n".join(line[indent:] if line[:indent].isspace() else line for line in lines) + "\n"
        tree = ast.parse(source)
        comments = _doc_comments(source)
    except Exception:  # no source (REPL, built dynamically) or unparsable: no docs
        return {}
    body = next((node.body for node in tree.body if isinstance(node, ast.ClassDef)), [])
    docs: dict[str, str] = {}
    for index, stmt in enumerate(body):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above: list[str] = []
        line = stmt.lineno - 1
        while line in comments and comments[line][1]:  # whole-line ``#:`` comments directly above
            above.insert(0, comments[line][0])
            line -= 1
        trailing = comments.get(stmt.end_lineno or stmt.lineno)
        after = body[index + 1] if index + 1 < len(body) else None
        if above:
            docs[stmt.target.id] = " ".join(above)
        elif trailing is not None and not trailing[1]:
            docs[stmt.target.id] = trailing[0]
        elif (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value).split("\n\n")[0]
    return {name: " ".join(doc.split()) for name, doc in docs.items() if doc.strip()}


def _doc_comments(source: str) -> dict[int, tuple[str, bool]]:
    """``{line: (text, whole_line)}`` for every ``#:`` comment (found by the tokenizer, so never inside a string)."""
    found: dict[int, tuple[str, bool]] = {}
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and token.string.startswith("#:"):
            row, col = token.start
            whole_line = not lines[row - 1][:col].strip()
            found[row] = (token.string[2:].strip(), whole_line)
    return found


__all__ = ["DOC_METADATA_KEYS", "ParamInfo", "describe_params", "field_docs", "json_value", "type_name"]
