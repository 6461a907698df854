"""Server settings from flags, environment (`EDGELOOP_*`) and defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_", extra="forbid")

    environment: Literal["development", "production"] = Field(
        "development", description="production refuses generated secrets and an embedded broker."
    )
    data_dir: Path = Field(Path("./edgeloop-data"), description="Database, artifacts, keys, admin token.")
    host: str = Field("127.0.0.1", description="Address the HTTP API binds to.")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port.")
    public_url: str | None = Field(None, description="URL devices use to reach this server (default: from host/port).")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir.")
    mqtt_url: str | None = Field(
        None, description="External broker URL (mqtt://user:pass@host:port). Unset: run one (Mosquitto or embedded)."
    )
    mqtt_public_url: str | None = Field(None, description="Broker URL as devices see it (default: mqtt_url).")
    mqtt_port: int = Field(
        1883, ge=0, le=65535, description="Port of the broker the server runs itself (0 = free port)."
    )
    mqtt_broker: Literal["auto", "mosquitto", "embedded"] = Field(
        "auto", description="Without mqtt_url: run Mosquitto if installed (auto), or force one kind."
    )
    mqtt_shared: bool = Field(True, description="Consume device topics through $share subscriptions.")
    mqtt_auth_dir: Path | None = Field(
        None,
        description="External Mosquitto: a folder it reads `password_file passwd` and `acl_file acl` from (and "
        "reloads when they change, see deploy/mosquitto). The server writes one account per device there, limited "
        "to its own topics, as it does for the Mosquitto it runs. Needs the server's credentials in mqtt_url.",
    )
    mqtt_client_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="External broker: this replica's own, stable MQTT client id (one per replica, e.g. the pod "
        "name). With it the broker keeps the server's session, so device state messages not yet stored when the "
        "server stops or dies are delivered again. Unset: a new id and a clean session each start. The broker "
        "the server runs itself always keeps the session.",
    )
    mqtt_keepalive_s: int = Field(
        30,
        ge=2,
        le=1200,
        description="Seconds between the server's MQTT keepalive pings: a broker that stops answering (frozen, or "
        "cut off) is noticed after about this long, and /healthz says so.",
    )
    bridge_queue: int = Field(
        10000, ge=10, description="Telemetry points waiting for the database before the oldest are shed."
    )
    mqtt_tls_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Managed Mosquitto: devices connect with TLS on this port (0 = a free port) and are told "
        "mqtts://; the plain listener then serves this host only. Unset: no TLS listener.",
    )
    mqtt_tls_cert: Path | None = Field(
        None, description="The TLS listener's certificate (PEM; default: one the server's own CA signs)."
    )
    mqtt_tls_key: Path | None = Field(None, description="Its private key (PEM), with mqtt_tls_cert.")
    mqtt_tls_ca: Path | None = Field(
        None,
        description="The CA devices pin for mqtt_tls_cert, or for an external broker's TLS listener (PEM), handed "
        "to them at enrollment.",
    )
    admin_token: SecretStr | None = Field(None, description="Admin API token; generated into data_dir if unset.")
    health_window_s: float = Field(10.0, ge=0, description="Default health window for new deployments.")
    manifest_valid_days: int = Field(365, ge=1, description="Manifests expire this many days after signing.")
    rollout_tick_s: float = Field(1.0, gt=0, le=60, description="How often the rollout engine advances rollouts.")
    compile_measure_s: float = Field(
        1.5,
        gt=0,
        le=60,
        description="Seconds a compile times each target per batch and thread count (precision vs wait).",
    )
    max_sample_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest hard-sample upload accepted.")
    max_sample_pixels: int = Field(16_000_000, ge=1, description="Largest image (pixels) a sample may have.")
    sample_dedup_distance: int = Field(4, ge=0, le=64, description="Perceptual-hash distance of a repeat scene.")
    job_lease_s: float = Field(30.0, gt=0, le=3600, description="A job whose replica is silent this long resumes.")
    run_jobs: bool = Field(True, description="Run training / compile / synthesis jobs on this replica.")
    jobs_url: str = Field(
        "local",
        pattern=r"^(local|ray://[^/\s]+)$",
        description="Where jobs run: `local` (a worker process on this replica) or ray://HOST:PORT (a Ray "
        "cluster's job API, its dashboard port, 8265 by default; training with --workers N runs Ray Train there). "
        "Job folders must be reachable at the same path from the Ray nodes.",
    )
    telemetry_history_s: float = Field(30.0, gt=0, description="Keep one telemetry point per device this often.")
    telemetry_retention_h: float = Field(24.0, gt=0, description="Telemetry points older than this are deleted.")
    storage_url: str | None = Field(
        None,
        description="S3-compatible object storage for artifacts and samples, e.g. "
        "s3://bucket/prefix?endpoint=http://minio:9000&region=us-east-1 (credentials: AWS_* environment).",
    )
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1, description="Largest model upload accepted.")
    webhook_timeout_s: float = Field(5.0, gt=0, le=60, description="A webhook receiver must answer within this.")
    webhook_retry_base_s: float = Field(
        2.0, gt=0, le=600, description="First retry of a failed webhook delivery after this; doubling, up to 1 h."
    )
    tls_cert: Path | None = Field(None, description="Serve HTTPS with this certificate (PEM), or leave TLS to a proxy.")
    tls_key: Path | None = Field(None, description="The HTTPS certificate's private key (PEM).")

    @model_validator(mode="after")
    def _production_secrets(self) -> Settings:
        if self.environment == "production":
            if self.admin_token is None or len(self.admin_token.get_secret_value()) < 24:
                raise ValueError("production needs EDGELOOP_ADMIN_TOKEN of at least 24 characters")
            if self.mqtt_url is None and self.mqtt_tls_port is None:
                raise ValueError(
                    "production needs EDGELOOP_MQTT_URL (an external broker) or EDGELOOP_MQTT_TLS_PORT (Mosquitto "
                    "run by the server, with TLS), not an embedded broker"
                )
            devices_mqtt = self.mqtt_public_url or self.mqtt_url
            if self.mqtt_tls_port is None and devices_mqtt is not None and not devices_mqtt.startswith("mqtts://"):
                raise ValueError(f"production refuses plaintext device traffic: devices would be told {devices_mqtt!r}")
            if not self.base_url.startswith("https://"):
                raise ValueError(
                    "production refuses plaintext device traffic: set EDGELOOP_PUBLIC_URL to the https:// address "
                    "of the reverse proxy (or of the server, with EDGELOOP_TLS_CERT)"
                )
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'edgeloop.db').resolve()}"

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{'https' if self.tls_cert else 'http'}://{host}:{self.port}"
