"""What every `edgeloop` subcommand uses: the admin client from the flags, and output as text or --json."""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from fleet_server.cli.client import AdminClient


def admin_client(args: argparse.Namespace) -> AdminClient:
    """The admin API client for --server-url / --token (or EDGELOOP_SERVER_URL / EDGELOOP_TOKEN)."""
    return AdminClient(args.server_url, args.token)


def out(args: argparse.Namespace, data: Any, text: str) -> None:
    """`data` as indented JSON with --json, else `text` for a person."""
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


def fetch_tar(c: AdminClient, path: str, params: dict[str, Any], dest: Path) -> None:
    """GET a .tar.gz from the server and unpack it safely (tar's `data` filter) into `dest`."""
    data = c.download(path, params)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        tf.extractall(dest, filter="data")
