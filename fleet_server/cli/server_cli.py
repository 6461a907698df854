"""`edgeloop server`: settings, keys and the admin token, then the application under uvicorn."""

from __future__ import annotations

import argparse
import sys

import uvicorn
from pydantic import ValidationError

from fleet_server.app import create_app
from fleet_server.jobs.backends import JobsBackendError, backend_for
from fleet_server.keys import ensure_admin_token, ensure_keys
from fleet_server.settings import Settings


def cmd_server(args: argparse.Namespace) -> int:
    overrides = {
        k: v
        for k, v in {
            "data_dir": args.data_dir,
            "host": args.host,
            "port": args.port,
            "mqtt_url": args.mqtt_url,
            "admin_token": args.admin_token,
            "database_url": args.database_url,
            "mqtt_port": args.mqtt_port,
            "public_url": args.public_url,
            "mqtt_broker": args.mqtt_broker,
            "mqtt_client_id": args.mqtt_client_id,
            "jobs_url": args.jobs,
        }.items()
        if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"edgeloop server: bad settings: {exc}", file=sys.stderr)
        return 2
    if settings.run_jobs and settings.jobs_url != "local":
        try:
            backend_for(settings.jobs_url)
        except JobsBackendError as exc:
            print(f"edgeloop server: jobs: {exc}", file=sys.stderr)
            return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    keys = ensure_keys(settings.data_dir)
    given = settings.admin_token.get_secret_value() if settings.admin_token else None
    _, token_path = ensure_admin_token(settings.data_dir, given)
    print(f"edgeloop server: API {settings.base_url}", flush=True)
    print(f"  console: {settings.base_url}/console (users: edgeloop users add NAME --role admin)", flush=True)
    print(f"  admin token: {'given by flag/env' if given else token_path}", flush=True)
    print(f"  signing keys: {keys.key_dir} (root public key in root.pub; move root.key offline)", flush=True)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level.lower(),
        access_log=False,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
    )
    return 0
