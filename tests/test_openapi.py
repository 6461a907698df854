"""The OpenAPI document a client generator or a fuzzer reads must match what the API answers: every
operation documents its refusals with the `{detail}` body the server sends (a sentence, or FastAPI's list
of field errors), and downloads are documented as bytes, not JSON."""

from __future__ import annotations

from pathlib import Path

from fleet_server.app import create_app
from fleet_server.settings import Settings


def test_every_operation_documents_its_errors_and_downloads_are_bytes(tmp_path: Path) -> None:
    doc = create_app(Settings(data_dir=tmp_path)).openapi()  # building the document starts nothing
    ops = [(path, op) for path, item in doc["paths"].items() for op in item.values() if path.startswith("/api/")]
    assert len(ops) > 40
    for path, op in ops:
        for code in ("401", "403", "404", "422"):
            assert code in op["responses"], (path, code)
        schema = op["responses"]["422"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorOut"}, path
    detail = doc["components"]["schemas"]["ErrorOut"]["properties"]["detail"]["anyOf"]
    assert {d["type"] for d in detail} == {"string", "array"}
    for path, media in (
        ("/api/v1/artifacts/{sha256}", "application/octet-stream"),
        ("/api/v1/samples/{sample_id}/image", "image/jpeg"),
        ("/api/v1/samples-export", "application/gzip"),
        ("/api/v1/datasets/{name}/versions/{version}/export", "application/gzip"),
    ):
        assert list(doc["paths"][path]["get"]["responses"]["200"]["content"]) == [media], path
