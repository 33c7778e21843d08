"""The committed JSON Schemas in schemas/ are exactly what the pydantic models generate."""

from __future__ import annotations

from pathlib import Path

from router.schemas import render, schema_documents

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_committed_schemas_match_the_models() -> None:
    docs = schema_documents()
    committed = {p.name for p in SCHEMAS.glob("*.schema.json")}
    assert committed == set(docs), "run `leadrouter schemas export` and commit schemas/"
    for name, doc in docs.items():
        assert (SCHEMAS / name).read_bytes() == render(doc), (
            f"schemas/{name} drifted from the models: run `leadrouter schemas export`"
        )


def test_every_topic_event_has_a_schema() -> None:
    expected = {"Touchpoint", "LeadProfile", "Rep", "NamedAccount", "SalesActivity",
                "Transition", "Assignment", "SlaEvent", "DeadLetter"}
    assert {n.removesuffix(".schema.json") for n in schema_documents()} == expected
