"""The OpenAPI document a client generator or a fuzzer reads must match what the API answers: every
operation documents its refusals with the `{detail}` body the server sends (a sentence, or FastAPI's list
of field errors), and downloads are documented as bytes, not JSON."""

from __future__ import annotations

import re
from pathlib import Path

from fleet_server.app import create_app
from fleet_server.settings import Settings
from tests.helpers import Server


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


def test_the_whole_api_fuzzed_with_a_fixed_seed_never_fails_and_answers_as_documented(
    tmp_path: Path, assets: dict[str, Path]
) -> None:
    """schemathesis over every operation of a real server (coverage, fuzzing and stateful phases, seed 1):
    no 5xx, and every response matches the OpenAPI document. A failure here is an input a client or a
    hostile caller can send that the server does not handle, or an answer a generated client would misread."""
    import shutil
    import subprocess
    import sys

    server = Server(tmp_path / "server", None)
    try:
        server.push(assets["model_v1"])  # something to find: a model version and a device
        server.enroll("fuzz-1")
        st = shutil.which("st", path=str(Path(sys.executable).parent))
        assert st, "schemathesis is in the dev extra: run `make test`"
        r = subprocess.run(
            [st, "--no-color", "run", f"{server.url}/openapi.json", "-H", f"Authorization: Bearer {server.token}",
             "--checks", "not_a_server_error,response_schema_conformance", "--max-examples", "5", "--seed", "1",
             "--workers", "1", "--request-timeout", "20"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout[-6000:]
        assert re.search(r"\d+ generated, \d+ passed", r.stdout) and "failed" not in r.stdout.split("Test cases:")[1]
        assert server.proc.alive()
    finally:
        server.stop()
