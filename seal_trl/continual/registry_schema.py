"""The schema of every file a registry reads back: the manifest, a version's adapter_config.json and documents.json.

Each is validated on every read (pydantic, strict: `"false"` is not a boolean, `[1, 2]` not a list of texts, NaN
and infinity are not numbers) so that a damaged or hand-edited file is one error that names the file and the field,
never a TypeError or KeyError later. Version names must match the registry's own pattern (`v0001`), which also
keeps them inside the registry: no absolute path, no `..`, no separator, no control character.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

FORMAT = "seal-trl-registry"
#: The manifest format this code writes, and the ones it reads.
FORMAT_VERSION = 1
KNOWN_FORMAT_VERSIONS = (FORMAT_VERSION,)
#: How the registry names versions (`f"v{n:04d}"`); anything else in a manifest is refused.
VERSION_PATTERN = r"^v[0-9]{4,9}$"


def printable(text: str) -> str:
    """`text` with control, format (zero-width, bidi) and unassigned characters escaped, so printing it cannot
    move the cursor, recolour the terminal or hide text (`"\\x1b[31m"` prints as `\\x1b[31m`)."""
    return "".join(repr(ch)[1:-1] if unicodedata.category(ch)[0] == "C" else ch for ch in text)


def _no_control_characters(text: str) -> str:
    if printable(text) != text:
        raise ValueError(f"contains control or invisible characters ({printable(text)!r})")
    return text


VersionName = Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]
Name = Annotated[str, StringConstraints(min_length=1), AfterValidator(_no_control_characters)]


class _Strict(BaseModel):
    # extra fields are kept (a newer writer may add some); the ones read are typed strictly
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, populate_by_name=True)


class Objective(_Strict):
    model_config = ConfigDict(allow_inf_nan=True)  # a gate value may legitimately be infinite (a perplexity blow-up)
    name: str
    value: float
    threshold: Any = None
    passed: bool


class Gate(_Strict):
    passed: bool
    reasons: list[str] = []
    objectives: list[Objective] = []


class DocumentEntry(_Strict):
    doc_id: Name
    title: str | None = None
    sha256: str = ""


class VersionEntry(_Strict):
    parent: VersionName | None
    created: str
    documents: list[DocumentEntry]
    gate: Gate
    promoted_at: list[str]
    metrics: dict[str, Any] = {}


class LogEntry(_Strict):
    action: Literal["promote", "rollback"]
    version: VersionName | None
    from_: VersionName | None = Field(default=None, alias="from")
    time: str
    reason: str = ""


class Manifest(_Strict):
    format: Literal["seal-trl-registry"]
    format_version: int
    created: str | None = None
    base_model: str | None = None
    promoted: VersionName | None
    versions: dict[VersionName, VersionEntry]
    log: list[LogEntry]


class AdapterConfig(_Strict):
    r: int = Field(gt=0)
    lora_alpha: float = Field(gt=0)


class _Question(_Strict):
    question: str
    answers: list[str]


class _Document(_Strict):
    doc_id: Name
    title: str
    text: str
    source: str = ""
    questions: list[_Question] = []


class _ProbeItem(_Strict):
    prompt: str
    answers: list[str] = Field(min_length=1)
    question: str = ""


class _Probe(_Strict):
    kind: str
    items: list[_ProbeItem] = Field(min_length=1)
    context_id: str | None = None
    distractors: list[str] = []
    held_out: list[str] = []


class DocumentRecord(_Strict):
    """One entry of a version's documents.json: what the version learned (replayed and re-probed later)."""

    document: _Document
    probe: _Probe
    examples: list[Annotated[str, Field(min_length=1)]]


_DOCUMENTS = TypeAdapter(list[DocumentRecord])


def schema_problem(err: ValidationError) -> str:
    """The first problem of a validation error as `field `a.b.c` <what is wrong> (got <value>)`."""
    first = err.errors()[0]
    field = ".".join(printable(str(p)) for p in first["loc"]) or "(the whole file)"
    got = printable(repr(first["input"]))
    got = got if len(got) <= 80 else got[:77] + "..."
    others = [".".join(printable(str(p)) for p in e["loc"]) for e in err.errors()[1:]]
    more = f"; also wrong: {', '.join(f'`{o}`' for o in others[:5])}" if others else ""
    more += f" and {len(others) - 5} more" if len(others) > 5 else ""
    return f"field `{field}`: {first['msg']} (got {got}){more}"


def format_problem(data: Any) -> str | None:
    """None when `data` claims to be a registry manifest in a format this code reads, else what it is instead."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return f"not a seal-trl registry manifest (field `format` is not {FORMAT!r})"
    version = data.get("format_version")
    if "format_version" in data and (isinstance(version, bool) or version not in KNOWN_FORMAT_VERSIONS):
        known = ", ".join(map(str, KNOWN_FORMAT_VERSIONS))
        return (f"field `format_version` is {printable(repr(version))}, a format this seal-trl does not know (it "
                f"reads format version {known}); use the seal-trl that wrote it")
    return None


def validate_manifest(data: Any) -> str | None:
    """None when `data` (in a known format, see `format_problem`) is a manifest this code can use, else the first
    thing wrong with it (one line)."""
    problem = _problem(Manifest.model_validate, data)
    if problem is not None:
        return problem
    versions = data["versions"]  # valid now: the links between versions are left to check
    for name, entry in versions.items():
        if entry["parent"] is not None and entry["parent"] not in versions:
            return f"field `versions.{name}.parent` names {entry['parent']!r}, which is not a version of this registry"
    if data["promoted"] is not None and data["promoted"] not in versions:
        return f"field `promoted` names {data['promoted']!r}, which is not a version of this registry"
    return None


def validate_adapter_config(data: Any) -> str | None:
    """None when `data` is a usable LoRA adapter config (positive integer `r`, finite positive `lora_alpha`)."""
    return _problem(AdapterConfig.model_validate, data)


def validate_documents(data: Any) -> str | None:
    """None when `data` is a version's documents.json: a list of {document, probe, examples} records."""
    return _problem(_DOCUMENTS.validate_python, data)


def _problem(validate: Callable[[Any], Any], data: Any) -> str | None:
    try:
        validate(data)
    except ValidationError as err:
        return schema_problem(err)
    return None
