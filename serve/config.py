"""Visus configuration: one YAML file plus `VISUS_*` environment overrides.

The pydantic models below are the YAML schema (unknown keys are errors, unlike Ray Serve's own
forgiving schema), and the single source from which the Ray Serve application, the `serve run`
config file and the KubeRay manifest are built, so the three never drift apart.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from serve.fetch_guard import FetchPolicy
from serve.jobs.journal import journal_scheme
from serve.webhooks import WebhookPolicy

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_config.yaml")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AutoscalingConfig(StrictModel):
    """The subset of Ray Serve's `autoscaling_config` we expose; names are Ray's own."""

    min_replicas: int = Field(1, ge=0)
    initial_replicas: int | None = Field(None, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)
    downscale_to_zero_delay_s: float | None = Field(None, ge=0)
    metrics_interval_s: float = Field(10.0, gt=0)
    look_back_period_s: float = Field(30.0, gt=0)


class DeploymentOptions(StrictModel):
    """Ray Serve deployment options for one deployment (gateway or model)."""

    num_replicas: int | None = Field(None, ge=1, description="Fixed replica count; excludes autoscaling.")
    autoscaling_config: AutoscalingConfig | None = None
    max_ongoing_requests: int = Field(4, ge=1)
    max_queued_requests: int = Field(-1, ge=-1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0, description="Wanted GPU share; dropped on clusters without GPUs.")
    memory: int | None = Field(None, ge=0, description="Bytes of RAM reserved per replica.")
    resources: dict[str, float] = Field(default_factory=dict, description=(
        "Ray custom resources per replica, e.g. {visus_group_sam2: 1} to pin it to a KubeRay worker group."))
    graceful_shutdown_timeout_s: float = Field(60.0, ge=0)
    health_check_period_s: float = Field(10.0, gt=0)

    def ray_options(self, has_gpu: bool) -> dict[str, Any]:
        """Keyword arguments for `serve.deployment(...)` / a serve config `deployments[]` entry."""
        actor: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus and has_gpu:
            actor["num_gpus"] = self.num_gpus
        if self.memory:
            actor["memory"] = self.memory
        if self.resources:
            actor["resources"] = dict(self.resources)
        # Each replica's torch threads follow its CPU reservation (oversubscription costs 2-18x).
        threads = str(max(1, int(self.num_cpus)))
        actor["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}}
        opts: dict[str, Any] = {
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
            "health_check_period_s": self.health_check_period_s,
        }
        if self.autoscaling_config is not None:
            opts["autoscaling_config"] = self.autoscaling_config.model_dump(exclude_none=True)
        else:
            opts["num_replicas"] = self.num_replicas or 1
        return opts


class WorkerConfig(StrictModel):
    """A helper deployment an endpoint's deployment calls (e.g. SAM 2 video's frame encoder).

    It scales on its own; the endpoint's deployment receives its handle under `name`. A worker with
    no `deployment` is a reference to another endpoint's deployment of that name (shared, not copied).
    """

    name: str = Field(..., pattern=r"^[A-Za-z0-9_\-]+$", description="Ray Serve deployment name.")
    deployment: str | None = Field(None, description=(
        "Import path of the deployment class, module:Class; unset: the deployment of the endpoint named `name`."))
    model: dict[str, Any] = Field(default_factory=dict, description="Passed to the deployment's setup().")
    options: DeploymentOptions = Field(default_factory=DeploymentOptions)


class EndpointConfig(StrictModel):
    """One served endpoint: its id, schemas and deployment by import path, and model settings."""

    id: str = Field(..., description="Endpoint id, e.g. fal-ai/sam2/image; a Segmind model slug, e.g. sam-v2-image.")
    protocol: Literal["fal", "segmind"] = Field("fal", description=(
        "fal: served under /{id} and /queue/{id}; segmind: under POST /v1/{id}, with x-api-key and credits."))
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_\-]+$", description=(
        "Ray Serve deployment name; default: made from the id. Other endpoints' workers refer to it."))
    deployment: str = Field(..., description="Import path of the deployment class, module:Class.")
    input_schema: str = Field(..., description="Import path of the pydantic input model.")
    output_schema: str = Field(..., description="Import path of the pydantic output model.")
    title: str = ""
    enabled: bool = True
    model: dict[str, Any] = Field(default_factory=dict, description="Passed to the deployment's setup().")
    options: DeploymentOptions = Field(default_factory=DeploymentOptions)
    workers: list[WorkerConfig] = Field(default_factory=list, description="Helper deployments it calls.")

    @model_validator(mode="after")
    def _check_id(self) -> "EndpointConfig":
        if self.protocol == "segmind":
            if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", self.id):
                raise ValueError(f"Segmind model slug {self.id!r}: lower-case letters, digits, '.' and '-' only")
            return self
        parts = self.id.split("/")
        if len(parts) < 2 or any(not p for p in parts):
            raise ValueError("endpoint id needs at least owner/alias")
        if parts[0] in RESERVED_FIRST_SEGMENTS:
            raise ValueError(f"endpoint owner {parts[0]!r} is reserved")
        if parts[-1] in ("stream", "realtime"):
            raise ValueError("endpoint id may not end with a reserved suffix")
        return self

    @property
    def deployment_name(self) -> str:
        """The Ray Serve deployment name: `name`, else the id with separators made safe."""
        if self.name:
            return self.name
        prefix = "segmind__" if self.protocol == "segmind" else ""
        return prefix + self.id.replace("/", "__").replace("-", "_").replace(".", "_")


RESERVED_FIRST_SEGMENTS = frozenset({"queue", "rest", "cdn", "files", "v1", "docs", "openapi.json",
                                     "healthz", "readyz", "metrics", "redoc"})


class QueueConfig(StrictModel):
    actor_name: str = "visus-job-queue"
    namespace: str = "visus"
    max_dispatch: int = Field(256, ge=1, description="Jobs handed to deployments at once, per queue actor.")
    max_attempts: int = Field(3, ge=1, description=(
        "Dispatches of one job whose replica dies under it; video jobs resume from their last checkpoint."))
    keep_completed_in_memory: int = Field(1000, ge=0)


class LimitsConfig(StrictModel):
    max_body_bytes: int = Field(32 * 2**20, ge=1024)
    max_upload_bytes: int = Field(1024 * 2**20, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    sync_timeout_s: float = Field(600.0, gt=0)


class RealtimeConfig(StrictModel):
    """Realtime websocket sessions (`/{endpoint_id}/realtime`)."""

    default_buffering: int = Field(2, ge=1, le=60, description=(
        "Inputs waiting per session when the client sends no max_buffering; when full, the oldest is dropped."))
    idle_timeout_s: float = Field(60.0, gt=0, description="A session with no input this long is closed (TIMEOUT).")
    max_message_bytes: int = Field(32 * 2**20, ge=1024, description="Largest input message accepted.")


class SegmindConfig(StrictModel):
    """Segmind's v1 API (`POST /v1/{slug}`): keys and their credits (`x-remaining-credits`, 406 when spent)."""

    credits: dict[str, float] = Field(default_factory=dict, description=(
        "x-api-key -> credits it starts with; keys on top of the Visus API keys."))
    default_credits: float = Field(1000.0, ge=0, description="Credits each Visus API key starts with.")
    cost_per_call: float = Field(1.0, ge=0, description="Credits a successful (200) call consumes.")


def _split_keys(value: Any) -> Any:
    if isinstance(value, str):
        return [k.strip() for k in value.split(",") if k.strip()]
    return value


class VisusConfig(BaseSettings):
    """Everything Visus needs; env `VISUS_<FIELD>` (nested: `VISUS_LIMITS__SYNC_TIMEOUT_S`) wins over YAML."""

    model_config = SettingsConfigDict(env_prefix="VISUS_", env_nested_delimiter="__", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    public_url: str | None = Field(None, description="Origin used in returned URLs; default: the request's.")
    home: str = Field(".visus", description="Local state folder (journal, storage, secrets, tiny models).")
    model_dir: str | None = Field(None, description="Checkpoints folder; tiny ones are written when unset.")
    storage_url: str | None = Field(None, description="fsspec URL for files; default <home>/storage.")
    journal_url: str | None = Field(None, description=(
        "Job queue journal: a file path or sqlite:///path (one machine), or redis://[:PASSWORD@]host:port/db "
        "(rediss:// for TLS; add ?prefix=... to change the key prefix, default visus:<app_name>:) for clusters; "
        "the Redis password may instead come from env VISUS_REDIS_PASSWORD. Default <home>/journal.sqlite."))
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    secret_key: str | None = Field(None, description="Signs tokens and upload URLs; generated when unset.")
    app_name: str = "visus"
    fetch: FetchPolicy = Field(default_factory=FetchPolicy)
    webhooks: WebhookPolicy = Field(default_factory=WebhookPolicy)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    realtime: RealtimeConfig = Field(default_factory=RealtimeConfig)
    segmind: SegmindConfig = Field(default_factory=SegmindConfig)
    gateway: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(num_cpus=0.5, max_ongoing_requests=1000))
    endpoints: list[EndpointConfig] = Field(default_factory=list)

    _split_api_keys = field_validator("api_keys", mode="before")(_split_keys)

    @field_validator("journal_url")
    @classmethod
    def _check_journal_url(cls, value: str | None) -> str | None:
        # Caught here rather than in the queue actor, which Ray would restart forever on a bad URL.
        if value:
            journal_scheme(value)
        return value

    @model_validator(mode="after")
    def _check_deployments(self) -> "VisusConfig":
        names = [name for name, _ in self.model_deployments()]
        if len(names) != len(set(names)):
            raise ValueError(f"deployment names must be unique, got {sorted(names)}")
        for endpoint in self.enabled_endpoints():
            for worker in endpoint.workers:
                if worker.deployment is None and worker.name not in names:
                    raise ValueError(f"endpoint {endpoint.id!r}: worker {worker.name!r} has no deployment and "
                                     "names no enabled endpoint's deployment")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings, file_secret_settings):
        # Environment beats the YAML file (passed as init kwargs), as the README promises.
        return (env_settings, init_settings)

    # --- derived locations -------------------------------------------------------------------
    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()

    @property
    def resolved_model_dir(self) -> Path:
        return Path(self.model_dir).expanduser().resolve() if self.model_dir else self.home_path / "models"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str(self.home_path / "storage")

    @property
    def resolved_journal_url(self) -> str:
        """The journal URL the queue actor opens (serve.jobs.journal.open_journal)."""
        return self.journal_url or str(self.home_path / "journal.sqlite")

    def enabled_endpoints(self) -> list[EndpointConfig]:
        return [e for e in self.endpoints if e.enabled]

    def model_deployments(self) -> list[tuple[str, DeploymentOptions]]:
        """(Ray Serve deployment name, options) of every enabled endpoint and of its own workers."""
        out = []
        for endpoint in self.enabled_endpoints():
            out.append((endpoint.deployment_name, endpoint.options))
            out += [(worker.name, worker.options) for worker in endpoint.workers if worker.deployment]
        return out

    def fal_endpoints(self) -> list[EndpointConfig]:
        return [e for e in self.enabled_endpoints() if e.protocol == "fal"]

    def segmind_endpoints(self) -> list[EndpointConfig]:
        return [e for e in self.enabled_endpoints() if e.protocol == "segmind"]

    def with_secrets(self) -> "VisusConfig":
        """Fill in a secret key and an API key when none are configured, persisted under home."""
        update: dict[str, Any] = {}
        if not self.secret_key:
            update["secret_key"] = _persistent_secret(self.home_path / "secret_key", 32)
        if not self.api_keys:
            update["api_keys"] = [_persistent_secret(self.home_path / "api_key", 24)]
        return self.model_copy(update=update) if update else self

    def model_setting(self, value: Any) -> Any:
        """Expand `${model_dir}` and `${home}` inside an endpoint's model settings."""
        if isinstance(value, str):
            return value.replace("${model_dir}", str(self.resolved_model_dir)).replace("${home}", str(self.home_path))
        if isinstance(value, dict):
            return {k: self.model_setting(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.model_setting(v) for v in value]
        return value


def _persistent_secret(path: Path, nbytes: int) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> VisusConfig:
    """Read the YAML config (default: $VISUS_CONFIG or the packaged default) and apply env overrides."""
    path = path or os.environ.get("VISUS_CONFIG") or DEFAULT_CONFIG_PATH
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a YAML mapping")
    data.update(overrides)
    return VisusConfig(**data)


def config_from_dict(data: dict[str, Any]) -> VisusConfig:
    """Rebuild a config inside a replica from its serialised form, without re-reading the environment."""
    return VisusConfig.model_validate(data)


ConfigFormat = Literal["yaml", "json"]
