"""Process settings: every flag of `portico serve` / `portico controller`, in one frozen model.

The CLI builds a `Settings` from flags, else `PORTICO_<FIELD>` environment variables, else the
defaults below, then splits it: `proxy_settings()` goes to every worker, `compile_settings()` to
the compiler, the rest (ports, manifests, workers, logging) to the supervisor. The data-plane
fields are generated from `proxy.settings.ProxySettings` so names and defaults never drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from proxy.settings import ProxySettings

if TYPE_CHECKING:
    from controller.compiler import CompileSettings

ENV_PREFIX: Final = "PORTICO_"

LogLevel = Literal["debug", "info", "warning", "error"]

# Help text of the data-plane flags. A field added to ProxySettings without an entry here still
# becomes a flag (with a generic help text), so the two can never disagree on names or defaults.
_PROXY_HELP: Final[Mapping[str, str]] = {
    "bind_address": "Address the public HTTP/HTTPS listeners bind to.",
    "http_port": "Public plain-HTTP port; 0 disables the listener.",
    "https_port": "Public HTTPS port; 0 disables the listener.",
    "max_header_bytes": "Largest request line + headers in bytes; 414/431 beyond.",
    "max_headers": "Most request header fields; 431 beyond.",
    "max_body_bytes": "Largest request body in bytes; 413 beyond; 0 = unlimited.",
    "max_connections": "Most open client connections per worker.",
    "client_header_timeout": "Seconds from a request's first byte to the end of its head.",
    "client_body_timeout": "Seconds allowed between two reads of a request body.",
    "keepalive_timeout": "Seconds a client connection may stay idle between two requests.",
    "upstream_connect_timeout": "Seconds to connect to a pod.",
    "upstream_send_timeout": "Seconds allowed between two writes of a request body to a pod.",
    "upstream_read_timeout": "Seconds to wait for a response head, and between two body reads.",
    "upstream_keepalive_timeout": "Seconds an idle pooled upstream connection is kept.",
    "upstream_keepalive_max": "Idle pooled connections kept per endpoint.",
    "upstream_keepalive_time": "Seconds an upstream connection is reused (then closed once idle).",
    "upstream_max_attempts": "Distinct endpoints tried when connecting fails.",
    "ejection_base": "Seconds an endpoint is ejected after a connect failure (doubles).",
    "ejection_max": "Cap, in seconds, of the doubling ejection time.",
    "tunnel_idle_timeout": "Seconds an upgraded (WebSocket) connection may stay idle.",
    "trusted_proxies": (
        "Comma-separated client networks (CIDR) whose X-Forwarded-* headers are trusted and "
        "extended; from any other client they are overwritten."
    ),
    "access_log": "Log one line per request (--access-log off, or --no-access-log, to stop).",
    "metrics_ingress_nginx_names": (
        "Also expose /metrics under ingress-nginx's metric names and labels, for existing "
        "dashboards."
    ),
    "tls_min_version": 'Oldest TLS version the HTTPS listener accepts: "1.2" or "1.3".',
    "hsts": "Send Strict-Transport-Security on HTTPS responses.",
    "hsts_max_age": "max-age, in seconds, of the Strict-Transport-Security header.",
    "hsts_include_subdomains": "Add includeSubDomains to the Strict-Transport-Security header.",
    "shutdown_delay": (
        "Seconds listeners stay open after SIGTERM (readiness already failing) so load "
        "balancers notice."
    ),
    "drain_timeout": "Seconds in-flight requests get to finish after the shutdown delay.",
}

# Lower bounds beyond "not negative"; ports also get an upper bound.
_PROXY_MINIMUM: Final[Mapping[str, int]] = {
    "max_header_bytes": 1,
    "max_headers": 1,
    "max_connections": 1,
    "upstream_max_attempts": 1,
}


def _proxy_field(name: str, annotation: Any, default: Any) -> tuple[Any, FieldInfo]:
    description = _PROXY_HELP.get(name, f"Data-plane setting `{name}` (proxy/settings.py).")
    constraints: dict[str, Any] = {}
    if annotation in (int, float):
        constraints["ge"] = _PROXY_MINIMUM.get(name, 0)
        if name.endswith("_port"):
            constraints["le"] = 65535
    return annotation, Field(default=default, description=description, **constraints)


def _proxy_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(ProxySettings)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(ProxySettings):
        fields[f.name] = _proxy_field(f.name, hints[f.name], f.default)
    return fields


if TYPE_CHECKING:
    # For the type checker only: the generated fields carry ProxySettings' own annotations.
    class _ProxyFields(BaseModel, ProxySettings, frozen=True):
        pass

else:
    _ProxyFields = create_model(
        "_ProxyFields", __config__=ConfigDict(frozen=True, extra="forbid"), **_proxy_fields()
    )

PROXY_FIELDS: Final = tuple(f.name for f in dataclasses.fields(ProxySettings))

_REF = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class SettingsError(ValueError):
    """Invalid settings; the message names the flag or environment variable and the reason."""


class Settings(_ProxyFields, frozen=True, extra="forbid"):
    """Everything `portico serve` takes. Data-plane fields come from ProxySettings."""

    manifests: Path | None = Field(
        default=None,
        description=(
            "Directory of YAML manifests (Ingress, IngressClass, Service, EndpointSlice, Secret) "
            "to serve instead of a cluster; watched for changes."
        ),
    )
    ingress_class: str = Field(
        default="portico",
        min_length=1,
        description="IngressClass name this controller serves (spec.ingressClassName).",
    )
    controller_name: str = Field(
        default="portico.dev/ingress-controller",
        min_length=1,
        description="spec.controller value of the IngressClasses this controller serves.",
    )
    watch_ingress_without_class: bool = Field(
        default=False,
        description="Also serve Ingresses that name no class (when no class is marked default).",
    )
    allow_external_name: bool = Field(
        default=False,
        description="Allow backends that are ExternalName Services (resolved through DNS).",
    )
    serve_without_access_control: bool = Field(
        default=False,
        description=(
            "Serve Ingresses whose access-control annotations (auth-*, auth-tls-*, satisfy, "
            "source ranges, ...) Portico does not enforce yet, unprotected, instead of leaving "
            "their routes out (fail closed); each is logged as a warning at every compile."
        ),
    )
    default_certificate: str | None = Field(
        default=None,
        description=(
            "namespace/name of a kubernetes.io/tls Secret served when no Ingress certificate "
            "matches; default: a self-signed certificate generated at start."
        ),
    )
    default_certificate_file: Path | None = Field(
        default=None,
        description=(
            "Manifest mode: PEM certificate chain file of the default certificate "
            "(with --default-certificate-key-file), instead of a Secret."
        ),
    )
    default_certificate_key_file: Path | None = Field(
        default=None,
        description="Manifest mode: PEM private key file of the default certificate.",
    )
    admin_port: int = Field(
        default=10254,
        ge=0,
        le=65535,
        description="Port of the admin listener (/healthz, /readyz, /metrics); 0 disables it.",
    )
    admin_address: str = Field(
        default="127.0.0.1", description="Address the admin listener binds to."
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Worker processes; default (or 'auto'): one per CPU of the cgroup's CPU quota (else"
            " per usable CPU), at most as many as the cgroup's memory limit holds."
        ),
    )
    log_level: LogLevel = Field(default="info", description="Least severe level logged.")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"{network!r} is not an IP network: {exc}") from None
        return value

    @field_validator("tls_min_version", check_fields=False)
    @classmethod
    def _check_tls_version(cls, value: str) -> str:
        if value not in ("1.2", "1.3"):
            raise ValueError(f"{value!r} is not a TLS version Portico accepts (1.2 or 1.3)")
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "auto"):
            return None
        return value

    @model_validator(mode="after")
    def _check_certificate_files(self) -> Settings:
        files = (self.default_certificate_file, self.default_certificate_key_file)
        if (files[0] is None) != (files[1] is None):
            raise ValueError(
                "--default-certificate-file and --default-certificate-key-file go together"
            )
        if files[0] is not None and self.default_certificate is not None:
            raise ValueError(
                "give either --default-certificate (a Secret) or the certificate files, not both"
            )
        return self

    @field_validator(
        "manifests",
        "default_certificate",
        "default_certificate_file",
        "default_certificate_key_file",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("default_certificate")
    @classmethod
    def _check_ref(cls, value: str | None) -> str | None:
        if value is not None and not _REF.match(value):
            raise ValueError(f"{value!r} is not a Secret reference of the form namespace/name")
        return value

    @field_validator("admin_address", "bind_address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    def proxy_settings(self) -> ProxySettings:
        """The data-plane part, handed to every worker."""
        return ProxySettings(**{name: getattr(self, name) for name in PROXY_FIELDS})

    def compile_settings(self) -> CompileSettings:
        """The part the compiler needs to decide which Ingresses are ours and what they may do."""
        from controller.compiler import CompileSettings

        return CompileSettings(
            ingress_class=self.ingress_class,
            controller_name=self.controller_name,
            watch_ingress_without_class=self.watch_ingress_without_class,
            allow_external_name=self.allow_external_name,
            default_certificate=self.default_certificate,
            serve_without_access_control=self.serve_without_access_control,
        )

    @classmethod
    def from_sources(
        cls, flags: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Flags win over `PORTICO_<FIELD>` environment variables, which win over defaults.

        `flags` holds only the flags actually given (field name -> value). Raises SettingsError.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for name in cls.model_fields:
            if name in flags:
                values[name] = flags[name]
                origin[name] = flag_name(name)
            elif (env := env_name(name)) in environ:
                values[name] = environ[env]
                origin[name] = env
        unknown = set(flags) - set(cls.model_fields)
        if unknown:
            raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
        try:
            return cls(**values)
        except ValidationError as exc:
            lines = []
            for error in exc.errors():
                name = str(error["loc"][0]) if error["loc"] else "?"
                source = origin.get(name, name)
                given = values.get(name)
                lines.append(f"{source}={given!s}: {error['msg']}")
            raise SettingsError("invalid settings: " + "; ".join(lines)) from None


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


_METAVARS: Final[Mapping[str, str]] = {
    "trusted_proxies": "CIDR,...",
    "manifests": "DIR",
    "default_certificate": "NAMESPACE/NAME",
    "default_certificate_file": "FILE",
    "default_certificate_key_file": "FILE",
    "log_level": "LEVEL",
    "workers": "N",
    str(int): "N",
    str(float): "SECONDS",
}


def _is_bool(info: FieldInfo) -> bool:
    return info.annotation is bool


_ON: Final = frozenset({"on", "true", "yes", "1"})
_OFF: Final = frozenset({"off", "false", "no", "0"})


class _Switch(argparse.Action):
    """A boolean flag: `--x`, `--no-x`, or `--x on|off` (nginx's spelling, e.g. `--access-log
    off`)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        names = list(option_strings)
        names += ["--no-" + o[2:] for o in option_strings if o.startswith("--")]
        super().__init__(names, dest, nargs="?", metavar="on|off", **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        negated = option_string is not None and option_string.startswith("--no-")
        if values is None:
            value = not negated
        elif negated:
            parser.error(f"{option_string} takes no value")
        elif str(values).lower() in _ON:
            value = True
        elif str(values).lower() in _OFF:
            value = False
        else:
            parser.error(f"{option_string}: expected on or off, got {values!r}")
        setattr(namespace, self.dest, value)


class SettingsHelpFormatter(argparse.HelpFormatter):
    """Shows a switch as `--x [on|off], --no-x`: the negated form takes no value."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, _Switch):
            names = action.option_strings
            shown = [f"{o} [on|off]" for o in names if not o.startswith("--no-")]
            return ", ".join(shown + [o for o in names if o.startswith("--no-")])
        return super()._format_action_invocation(action)


def add_settings_arguments(
    parser: argparse.ArgumentParser, fields: Iterable[str] | None = None
) -> None:
    """Add one flag per Settings field (or per field in `fields`), help from its description.

    Flags default to "not given" so `Settings.from_sources` can fall back to the environment.
    """
    names = list(Settings.model_fields) if fields is None else list(fields)
    for name in names:
        info = Settings.model_fields[name]
        default = info.default
        shown = ",".join(default) if isinstance(default, tuple) else default
        help_text = f"{info.description} [env {env_name(name)}; default: {shown}]"
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": help_text.replace("%", "%%"),
        }
        if _is_bool(info):
            kwargs["action"] = _Switch
        else:
            kwargs["metavar"] = _METAVARS.get(name) or _METAVARS.get(str(info.annotation), "VALUE")
        parser.add_argument(flag_name(name), **kwargs)


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Settings:
    """The Settings the parsed flags (added by `add_settings_arguments`) describe."""
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    return Settings.from_sources(given, environ)
