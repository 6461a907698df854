"""`edgeloop keys`: the release key's certificate, its rotation, and certification by an offline root key.
These act on the server's data folder, not through the API: run them on the server's machine (and
`certify` on the machine that keeps the root key), then restart the server to sign with the new key."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from edge_agent.protocol.signing import ReleaseCert
from fleet_server.cli.client import CliError
from fleet_server.cli.common import out
from fleet_server.keys import KeyRotationError, certify_request, import_cert, key_status, rotate_release


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("EDGELOOP_DATA_DIR") or "./edgeloop-data")


def cmd_status(args: argparse.Namespace) -> int:
    try:
        s = key_status(_data_dir(args))
    except KeyRotationError as exc:
        raise CliError(str(exc)) from None
    where = "root.key is on this machine: move it offline" if s["root_key_on_this_machine"] else "kept offline"
    until = f"certified until {s['release_expires_at']} ({s['release_days_left']:.0f} days)"
    text = (
        f"root     {s['root_fingerprint']}  ({where})\n"
        f"release  {s['release_fingerprint']}  {until}"
        + (f"\nWARNING: {s['warning']}" if s["warning"] else "")
        + ("\na rotation waits for its certificate: `edgeloop keys import CERT`" if s["pending_request"] else "")
    )
    out(args, s, text)
    return 1 if s["warning"] else 0


def cmd_rotate(args: argparse.Namespace) -> int:
    try:
        r = rotate_release(_data_dir(args), args.days)
    except KeyRotationError as exc:
        raise CliError(str(exc)) from None
    if r["installed"]:
        text = f"new release key {r['release_fingerprint']} certified until {r['expires_at']}; restart the server"
    else:
        text = (
            f"wrote {r['request']}: the root key is not on this machine. On the machine that keeps it:\n"
            f"  edgeloop keys certify --root-key root.key --request release.request.json --out release.cert.json\n"
            f"then here: edgeloop keys import release.cert.json, and restart the server"
        )
    out(args, r, text)
    return 0


def cmd_certify(args: argparse.Namespace) -> int:
    try:
        request = json.loads(Path(args.request).read_text())
        cert = certify_request(Path(args.root_key), request, args.days)
    except (OSError, ValueError, KeyRotationError) as exc:
        raise CliError(f"certify: {exc}") from None
    Path(args.out).write_text(cert.model_dump_json())
    out(args, {"out": args.out, "expires_at": cert.body().expires_at}, f"wrote {args.out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    try:
        cert = ReleaseCert.model_validate_json(Path(args.cert).read_text())
        r = import_cert(_data_dir(args), cert)
    except (OSError, ValueError, KeyRotationError) as exc:
        raise CliError(f"import: {exc}") from None
    out(args, r, f"installed release key {r['release_fingerprint']} until {r['expires_at']}; restart the server")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser("keys", help="signing keys: status, rotation, offline certification").add_subparsers(
        dest="keys_command", required=True
    )

    def local(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="the server's data folder (env EDGELOOP_DATA_DIR; default ./edgeloop-data)")
        p.add_argument("--json", action="store_true", help="print JSON")

    st = k.add_parser("status", help="keys and the release certificate's expiry (exit 1 within 30 days of it)")
    local(st)
    st.set_defaults(func=cmd_status)
    ro = k.add_parser("rotate-release", help="a new release key: certified here if root.key is, else a request")
    local(ro)
    ro.add_argument("--days", type=int, default=365, help="validity of the new certificate (default 365)")
    ro.set_defaults(func=cmd_rotate)
    ce = k.add_parser("certify", help="on the root key's machine: certify a release key request")
    ce.add_argument("--root-key", required=True, help="root.key")
    ce.add_argument("--request", required=True, help="release.request.json from rotate-release")
    ce.add_argument("--out", required=True, help="where to write the certificate")
    ce.add_argument("--days", type=int, default=365, help="validity (default 365)")
    ce.add_argument("--json", action="store_true", help="print JSON")
    ce.set_defaults(func=cmd_certify)
    im = k.add_parser("import", help="install the pending release key with its certificate from certify")
    im.add_argument("cert", help="release.cert.json")
    local(im)
    im.set_defaults(func=cmd_import)
