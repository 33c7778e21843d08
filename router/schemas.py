"""JSON Schemas of every topic's events, generated from the pydantic models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from router.domain.events import INPUT_MODELS, OUTPUT_MODELS


def schema_documents() -> dict[str, dict[str, Any]]:
    """File name -> schema for every input and output event."""
    docs: dict[str, dict[str, Any]] = {}
    for name, model in INPUT_MODELS.items():
        docs[f"{name}.schema.json"] = model.model_json_schema(mode="validation")
    for name, model in OUTPUT_MODELS.items():
        # validation mode: the shape a consumer may rely on (optional trace fields stay optional)
        docs[f"{name}.schema.json"] = model.model_json_schema(mode="validation", by_alias=True)
    for name, doc in docs.items():
        doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        doc["$id"] = f"https://leadrouter.example/schemas/{name}"
    return docs


def render(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write_schemas(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in schema_documents().items():
        path = out / name
        path.write_bytes(render(doc))
        written.append(path)
    return written
