"""Settings: flags over environment over defaults, generated data-plane fields, clear errors."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from controller.settings import (
    CLUSTER_FIELDS,
    PROXY_FIELDS,
    SERVE_FIELDS,
    Settings,
    SettingsError,
    add_settings_arguments,
    flag_name,
    settings_from_args,
)
from proxy.settings import ProxySettings


def _parse(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return settings_from_args(parser.parse_args(argv), environ or {})


def test_every_proxy_field_is_a_setting_with_the_same_default() -> None:
    fields = Settings.model_fields
    for f in dataclasses.fields(ProxySettings):
        assert f.name in fields, f.name
        assert fields[f.name].default == f.default, f.name
        assert fields[f.name].description, f.name
    assert set(PROXY_FIELDS) == {f.name for f in dataclasses.fields(ProxySettings)}


def test_every_field_is_documented() -> None:
    for name, info in Settings.model_fields.items():
        assert info.description, name
        assert "proxy/settings.py" not in info.description, f"{name}: add it to _PROXY_HELP"


def test_defaults() -> None:
    settings = _parse([])
    assert settings.proxy_settings() == ProxySettings()
    assert settings.manifests is None
    assert settings.admin_port == 10254
    assert settings.admin_address == "127.0.0.1"
    assert settings.workers is None
    assert settings.log_level == "info"
    compile_settings = settings.compile_settings()
    assert compile_settings.ingress_classes == ("portico",)
    assert compile_settings.controller_names == ("portico.dev/ingress-controller",)
    assert compile_settings.watch_ingress_without_class is False
    assert compile_settings.allow_external_name is False


@pytest.mark.parametrize(
    ("argv", "environ", "field", "expected"),
    [
        (["--http-port", "81"], {}, "http_port", 81),
        ([], {"PORTICO_HTTP_PORT": "82"}, "http_port", 82),
        (["--http-port", "81"], {"PORTICO_HTTP_PORT": "82"}, "http_port", 81),
        (["--manifests", "examples"], {}, "manifests", Path("examples")),
        (["--workers", "3"], {}, "workers", 3),
        ([], {"PORTICO_WORKERS": "auto"}, "workers", None),
        (["--no-access-log"], {"PORTICO_ACCESS_LOG": "true"}, "access_log", False),
        ([], {"PORTICO_ACCESS_LOG": "false"}, "access_log", False),
        (["--watch-ingress-without-class"], {}, "watch_ingress_without_class", True),
        ([], {"PORTICO_ALLOW_EXTERNAL_NAME": "1"}, "allow_external_name", True),
        (["--log-level", "DEBUG"], {}, "log_level", "debug"),
        (["--upstream-read-timeout", "2.5"], {}, "upstream_read_timeout", 2.5),
        (["--default-certificate", "ns/cert"], {}, "default_certificate", "ns/cert"),
        (
            ["--trusted-proxies", "10.0.0.0/8, 192.168.1.1"],
            {},
            "trusted_proxies",
            ("10.0.0.0/8", "192.168.1.1"),
        ),
        ([], {"PORTICO_TRUSTED_PROXIES": ""}, "trusted_proxies", ()),
        # Class takeover: Portico's own class and ingress-nginx's, side by side.
        (["--ingress-class", "portico,nginx"], {}, "ingress_class", ("portico", "nginx")),
        (
            [],
            {"PORTICO_CONTROLLER_NAME": "portico.dev/ingress-controller, k8s.io/ingress-nginx"},
            "controller_name",
            ("portico.dev/ingress-controller", "k8s.io/ingress-nginx"),
        ),
    ],
)
def test_sources(argv: list[str], environ: dict[str, str], field: str, expected: Any) -> None:
    assert getattr(_parse(argv, environ), field) == expected


def test_proxy_settings_carry_the_values() -> None:
    settings = _parse(["--https-port", "0", "--trusted-proxies", "10.0.0.0/8"])
    proxy = settings.proxy_settings()
    assert proxy.https_port == 0
    assert proxy.trusted_proxies == ("10.0.0.0/8",)
    assert ProxySettings.from_json(proxy.to_json()) == proxy


@pytest.mark.parametrize(
    ("argv", "environ", "named"),
    [
        (["--http-port", "eighty"], {}, "--http-port"),
        (["--http-port", "70000"], {}, "--http-port"),
        ([], {"PORTICO_ADMIN_PORT": "-1"}, "PORTICO_ADMIN_PORT"),
        (["--workers", "0"], {}, "--workers"),
        (["--trusted-proxies", "10.0.0.0/8,not-a-network"], {}, "--trusted-proxies"),
        (["--log-level", "loud"], {}, "--log-level"),
        (["--default-certificate", "no-namespace"], {}, "--default-certificate"),
        (["--bind-address", "localhost:80"], {}, "--bind-address"),
        ([], {"PORTICO_KEEPALIVE_TIMEOUT": "-5"}, "PORTICO_KEEPALIVE_TIMEOUT"),
        (["--ingress-class", ""], {}, "--ingress-class"),
        (["--controller-name", "k8s.io/ingress nginx"], {}, "--controller-name"),
        (["--tls-min-version", "1.1"], {}, "--tls-min-version"),
    ],
)
def test_invalid_values_name_their_source(
    argv: list[str], environ: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        _parse(argv, environ)


def test_settings_are_frozen() -> None:
    settings = _parse([])
    with pytest.raises(ValueError):
        settings.http_port = 1  # type: ignore[misc]


def test_unknown_setting_is_rejected() -> None:
    with pytest.raises(SettingsError, match="nonsense"):
        Settings.from_sources({"nonsense": 1}, {})


def test_help_lists_env_and_default() -> None:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    text = parser.format_help()
    assert "PORTICO_HTTP_PORT" in text
    assert "--max-header-bytes" in text
    assert "--no-access-log" in text


def test_help_shows_switches_with_a_value_only_on_the_positive_form() -> None:
    from controller.cli import build_parser

    parser = build_parser()
    commands = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )  # the subcommands' parsers
    text = commands.choices["serve"].format_help()
    assert "--access-log [on|off], --no-access-log\n" in text
    assert "--no-access-log [on|off]" not in text


# ---- cluster mode: the same mechanism, flags and PORTICO_* names as the chart sets them --------


@pytest.mark.parametrize(
    ("argv", "environ", "field", "expected"),
    [
        (["--kubeconfig", "/k/config"], {}, "kubeconfig", Path("/k/config")),
        ([], {"PORTICO_KUBECONFIG": ""}, "kubeconfig", None),
        (["--watch-namespaces", "team-a, team-b"], {}, "watch_namespaces", ("team-a", "team-b")),
        ([], {"PORTICO_WATCH_NAMESPACES": "team-a"}, "watch_namespaces", ("team-a",)),
        ([], {"PORTICO_WATCH_NAMESPACES": ""}, "watch_namespaces", ()),
        ([], {"PORTICO_PUBLISH_SERVICE": "ingress/portico"}, "publish_service", "ingress/portico"),
        ([], {"PORTICO_PUBLISH_SERVICE": ""}, "publish_service", None),
        (
            ["--publish-status-address", "203.0.113.1,LB.example.com"],
            {},
            "publish_status_address",
            ("203.0.113.1", "LB.example.com"),
        ),
        ([], {"PORTICO_ELECTION_ID": "demo-portico-leader"}, "election_id", "demo-portico-leader"),
        (["--election-namespace", "ingress"], {}, "election_namespace", "ingress"),
        ([], {"PORTICO_LEASE_DURATION": "20"}, "lease_duration", 20.0),
        (["--renew-deadline", "5", "--retry-period", "1"], {}, "retry_period", 1.0),
        (["--pod-name", "portico-0"], {"PORTICO_POD_NAME": "other"}, "pod_name", "portico-0"),
        ([], {"PORTICO_WATCH_TIMEOUT": "30"}, "watch_timeout", 30.0),
        (["--max-backoff", "0.5"], {}, "max_backoff", 0.5),
        (["--no-events"], {"PORTICO_EVENTS": "true"}, "events", False),
        ([], {"PORTICO_EVENTS": "false"}, "events", False),
        (["--events", "off"], {}, "events", False),
    ],
)
def test_cluster_sources(
    argv: list[str], environ: dict[str, str], field: str, expected: Any
) -> None:
    assert getattr(_parse(argv, environ), field) == expected


@pytest.mark.parametrize(
    ("argv", "environ", "named"),
    [
        (["--watch-namespaces", "team-a,Team_B"], {}, "--watch-namespaces.*Team_B"),
        ([], {"PORTICO_PUBLISH_SERVICE": "portico"}, "PORTICO_PUBLISH_SERVICE"),
        (["--publish-status-address", "not an address"], {}, "--publish-status-address"),
        (["--election-id", "Leader!"], {}, "--election-id"),
        ([], {"PORTICO_ELECTION_NAMESPACE": "-x"}, "PORTICO_ELECTION_NAMESPACE"),
        (["--pod-name", ""], {}, "--pod-name"),
        (["--lease-duration", "eternal"], {}, "--lease-duration"),
        (["--lease-duration", "5"], {}, "--lease-duration"),  # not longer than the deadline
        ([], {"PORTICO_WATCH_TIMEOUT": "0.5"}, "PORTICO_WATCH_TIMEOUT"),
        (["--max-backoff", "0"], {}, "--max-backoff"),
        ([], {"PORTICO_EVENTS": "maybe"}, "PORTICO_EVENTS"),
    ],
)
def test_invalid_cluster_values_name_their_source(
    argv: list[str], environ: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        _parse(argv, environ)


def test_cluster_defaults_come_from_the_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "ingress")
    monkeypatch.setenv("POD_NAME", "portico-7d9c")
    settings = _parse([])
    assert (settings.election_namespace, settings.pod_name) == ("ingress", "portico-7d9c")
    assert settings.election_id == "portico-leader"
    assert settings.lease_duration_seconds == 15
    monkeypatch.setenv("POD_NAMESPACE", "Not_A_Namespace")
    with pytest.raises(SettingsError, match="election-namespace"):
        _parse([])


def test_publish_helpers() -> None:
    settings = _parse(
        ["--publish-service", "ingress/portico", "--publish-status-address", "10.0.0.1,LB.Test"]
    )
    assert settings.publish_service_ref() == ("ingress", "portico")
    assert settings.publish_addresses() == (("10.0.0.1", None), (None, "lb.test"))
    assert (
        _parse(["--lease-duration", "10.2", "--renew-deadline", "9"]).lease_duration_seconds == 11
    )


def test_serve_neither_shows_nor_reads_the_cluster_settings() -> None:
    from controller.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve, controller = commands.choices["serve"], commands.choices["controller"]
    controller_help = controller.format_help()
    for name in Settings.model_fields:  # `portico controller --help` is complete
        assert flag_name(name) in controller_help, name
    serve_help = serve.format_help()
    assert all(flag_name(name) not in serve_help for name in CLUSTER_FIELDS)
    # A cluster variable `serve` does not take cannot fail it.
    args = serve.parse_args(["--manifests", "examples"])
    environ = {"PORTICO_WATCH_NAMESPACES": "Not Valid", "PORTICO_HTTP_PORT": "81"}
    settings = settings_from_args(args, environ, SERVE_FIELDS)
    assert (settings.watch_namespaces, settings.http_port) == ((), 81)
    with pytest.raises(SettingsError, match="PORTICO_WATCH_NAMESPACES"):
        settings_from_args(controller.parse_args([]), environ)
