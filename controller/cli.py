"""The `portico` command line: serve, check, explain, compat-report, docs, echo.

Only argument parsing and printing live here: `serve` and `controller` hand a `Settings` to the
composition root (`controller/app.py`), `check` and `explain` read a manifest directory once and
compile it (the same code path as `serve`), `compat-report` prints `controller/compat.py`'s
report, `echo` runs the demo/test backend. Usage errors and invalid settings exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

from controller.logs import configure_logging
from controller.settings import (
    SERVE_FIELDS,
    Settings,
    SettingsError,
    SettingsHelpFormatter,
    add_settings_arguments,
    env_name,
    settings_from_args,
)

if TYPE_CHECKING:
    from controller.compiler import CompileSettings, Problem

# The settings that change what a compile produces: `check` and `explain` take them too, so
# they answer for the same configuration `serve` runs with.
COMPILE_FIELDS: Final = (
    "ingress_class",
    "controller_name",
    "watch_ingress_without_class",
    "allow_external_name",
    "serve_without_access_control",
    "ssl_redirect",
    "nginx_configmap",
)

LOG_LEVELS: Final = ("debug", "info", "warning", "error")

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_USAGE: Final = 2


def _add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=str.lower,
        default=os.environ.get(env_name("log_level"), default).lower(),
        help=f"least severe level logged, JSON on stderr [env {env_name('log_level')}; "
        f"default {default}]",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portico", description="Kubernetes Ingress controller and reverse proxy."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the proxy on a manifest directory, recompiling on every change",
        description="Run the proxy. Every flag can also be set with PORTICO_<FLAG> "
        "(upper case, '_' for '-'); flags win.",
        formatter_class=SettingsHelpFormatter,
    )
    add_settings_arguments(serve, SERVE_FIELDS)

    controller = commands.add_parser(
        "controller",
        help="run in a cluster: watch the API server, route, publish Ingress status",
        description="Cluster mode (the container's entrypoint). Every flag can also be set with "
        "PORTICO_<FLAG> (upper case, '_' for '-'); flags win.",
        formatter_class=SettingsHelpFormatter,
    )
    add_settings_arguments(controller)

    check = commands.add_parser(
        "check", help="compile a manifest directory once and print every problem"
    )
    check.add_argument("directory", type=Path, metavar="DIR")
    add_settings_arguments(check, COMPILE_FIELDS)
    _add_log_level(check, "warning")

    explain = commands.add_parser("explain", help="where a request would be routed, or why nowhere")
    explain.add_argument("url", metavar="URL", help="e.g. http://demo.local/api/x")
    explain.add_argument(
        "--manifests", type=Path, required=True, metavar="DIR", help="manifest directory"
    )
    explain.add_argument(
        "--header",
        "-H",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header, e.g. 'Host: demo.local' (repeatable)",
    )
    explain.add_argument("--method", "-X", default="GET", help="request method (default GET)")
    explain.add_argument("--output", "-o", choices=("text", "json"), default="text")
    add_settings_arguments(explain, COMPILE_FIELDS)
    _add_log_level(explain, "warning")

    compat = commands.add_parser(
        "compat-report",
        help="what Portico does with each ingress-nginx annotation of some Ingresses",
        description="Per Ingress, per nginx.ingress.kubernetes.io/ (or portico.dev/) annotation: "
        "its value, its status (supported, different, unsupported, refused, unknown) and what "
        "Portico does. Exit 0: all supported; 1: something differs or has no effect; 2: an "
        "Ingress would not be served (snippet, access control not enforced yet) or input "
        "error.",
    )
    compat.add_argument(
        "sources",
        nargs="*",
        metavar="PATH",
        help="manifest directories or files; - reads standard input (kubectl get ingress -A "
        "-o yaml)",
    )
    compat.add_argument(
        "--kubeconfig", type=Path, metavar="FILE", help="list the Ingresses of this cluster"
    )
    compat.add_argument(
        "--configmap", type=Path, metavar="FILE", help="the ingress-nginx controller ConfigMap"
    )
    compat.add_argument("--output", "-o", choices=("text", "json"), default="text")
    _add_log_level(compat, "warning")

    docs = commands.add_parser("docs", help="print generated documentation")
    docs.add_argument(
        "topic",
        choices=("annotations", "configmap"),
        help="annotations: the ingress-nginx annotation catalogue, as docs/annotations.md; "
        "configmap: the ingress-nginx ConfigMap keys, as docs/configmap.md",
    )
    _add_log_level(docs, "warning")

    echo = commands.add_parser("echo", help="run the echo backend (a stand-in pod)")
    echo.add_argument("--listen", required=True, metavar="IP:PORT")
    echo.add_argument("--service", required=True, metavar="NAME")
    echo.add_argument("--pod", default=None, metavar="NAME", help="default: the listen address")
    echo.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this chain")
    echo.add_argument("--tls-key", type=Path, metavar="PEM", help="the key of --tls-cert")
    echo.add_argument(
        "--delay-ms", type=int, default=0, metavar="N", help="answer every request N ms late"
    )
    _add_log_level(echo, "info")
    return parser


def _controller(args: argparse.Namespace) -> int:
    from controller.app import run_cluster

    settings = settings_from_args(args)
    configure_logging(settings.log_level)
    return asyncio.run(run_cluster(settings))


def _fail(message: str, err: TextIO) -> int:
    print(f"portico: {message}", file=err)
    return EXIT_USAGE


def _compile_settings(args: argparse.Namespace) -> Settings:
    # Only the compile settings' variables: a bad PORTICO_HTTP_PORT must not fail `check`.
    environ = {
        env_name(f): os.environ[env_name(f)] for f in COMPILE_FIELDS if env_name(f) in os.environ
    }
    return settings_from_args(args, environ)


def _with_configmap(
    settings: Settings, directory: Path
) -> tuple[CompileSettings, tuple[Problem, ...]]:
    """The compile settings under the ingress-nginx ConfigMap of the directory, if one is
    named, and the ConfigMap's problems."""
    from controller.configmap import compile_settings, from_directory

    settings, reading = from_directory(settings, directory)
    if reading is None:
        return settings.compile_settings(), ()
    return compile_settings(settings, reading), reading.problems()


def _check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from controller.compiler import compile_view
    from controller.files import read_manifests

    directory: Path = args.directory
    if not directory.is_dir():
        return _fail(f"{directory} is not a directory", err)
    settings = _compile_settings(args)
    store, source = read_manifests(directory)
    compiling, configmap_problems = _with_configmap(settings, directory)
    result = compile_view(store, compiling)
    problems = (*source.problems, *configmap_problems, *sorted(result.problems))
    for problem in problems:
        print(str(problem), file=out)
    for ref, why in sorted(result.ignored.items()):
        print(f"ignored Ingress {ref}: {why}", file=out)
    skipped = source.skipped
    for item in skipped:
        if item.problem is None:  # the others are problems, printed above
            print(f"skipped {item} (kind not read)", file=out)
    snapshot = result.snapshot
    hosts = sorted(vh.host or "(any host)" for vh in snapshot.routes.virtual_hosts)
    endpoints = sum(len(b.endpoints) for b in snapshot.backends)
    print(
        f"{directory}: {len(problems)} problem{'s' if len(problems) != 1 else ''}; "
        f"ingresses: {len(result.owned)} owned, {len(result.ignored)} ignored; "
        f"hosts: {len(hosts)}{' (' + ', '.join(hosts) + ')' if hosts else ''}; "
        f"default backend: {'yes' if snapshot.routes.default is not None else 'no'}; "
        f"backends: {len(snapshot.backends)}; endpoints: {endpoints}; "
        f"skipped objects (kinds not read): {len(skipped)}",
        file=out,
    )
    return EXIT_PROBLEMS if problems else EXIT_OK


def _parse_headers(raw: Sequence[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in raw:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"header {item!r} is not 'Name: value'")
        headers[name.strip()] = value.strip()
    return headers


def _explain(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from controller.compiler import compile_view
    from controller.explain import RequestError, describe, explain
    from controller.files import read_manifests

    directory: Path = args.manifests
    if not directory.is_dir():
        return _fail(f"{directory} is not a directory", err)
    try:
        headers = _parse_headers(args.header)
    except ValueError as exc:
        return _fail(str(exc), err)
    settings = _compile_settings(args)
    store, source = read_manifests(directory)
    compiling, configmap_problems = _with_configmap(settings, directory)
    result = compile_view(store, compiling)
    try:
        answer = explain(result, store, args.url, headers)
    except RequestError as exc:
        return _fail(str(exc), err)
    if args.output == "json":
        print(json.dumps(answer), file=out)
        return EXIT_OK
    print(f"request:   {args.method.upper()} {args.url}", file=out)
    for line in describe(answer, result.ignored):
        print(line, file=out)
    related = {answer.get("ingress"), answer.get("service")} - {None}
    for problem in (*source.problems, *configmap_problems, *result.problems):
        if problem.ref in related:
            print(f"problem:   {problem}", file=out)
    return EXIT_OK


def _compat(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from controller.compat import (
        InputError,
        build,
        read_cluster,
        read_configmap,
        read_sources,
        render_text,
    )

    if not args.sources and args.kubeconfig is None:
        return _fail("compat-report needs manifest PATHs, - (standard input) or --kubeconfig", err)
    try:
        text = stdin.read() if "-" in args.sources else None
        subjects = read_sources(args.sources, text)
        if args.kubeconfig is not None:
            subjects += asyncio.run(read_cluster(args.kubeconfig))
        configmap = None if args.configmap is None else read_configmap(args.configmap)
    except InputError as exc:
        return _fail(str(exc), err)
    report = build(subjects, configmap)
    if args.output == "json":
        print(json.dumps(report.to_json(), indent=2), file=out)
    else:
        for line in render_text(report):
            print(line, file=out)
    return report.exit_code()


def _echo(args: argparse.Namespace, err: TextIO) -> int:
    import ssl

    from controller.echo import parse_listen, run_echo, server_context

    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        return _fail(f"--listen: {exc}", err)
    if args.delay_ms < 0:
        return _fail("--delay-ms must not be negative", err)
    if (args.tls_cert is None) != (args.tls_key is None):
        return _fail("--tls-cert and --tls-key go together", err)
    context = None
    if args.tls_cert is not None:
        try:
            context = server_context(str(args.tls_cert), str(args.tls_key))
        except (OSError, ssl.SSLError) as exc:
            return _fail(f"--tls-cert/--tls-key: {exc}", err)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            run_echo(
                host,
                port,
                args.service,
                args.pod or args.listen,
                delay_ms=args.delay_ms,
                ssl_context=context,
            )
        )
    return EXIT_OK


def _serve(settings: Settings, err: TextIO) -> int:
    if settings.manifests is None:
        return _fail("serve needs --manifests DIR (or PORTICO_MANIFESTS)", err)
    if not settings.manifests.is_dir():
        return _fail(f"--manifests: {settings.manifests} is not a directory", err)
    from controller.app import run_manifests

    return asyncio.run(run_manifests(settings))


def main(
    argv: Sequence[str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Entry point of `portico` and `python -m controller`; returns the exit code."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    args = build_parser().parse_args(argv)
    try:
        if args.command == "controller":
            return _controller(args)
        if args.command == "serve":
            settings = settings_from_args(args, fields=SERVE_FIELDS)
            configure_logging(settings.log_level)
            return _serve(settings, err)
        if args.log_level not in LOG_LEVELS:
            return _fail(f"PORTICO_LOG_LEVEL={args.log_level}: not one of {LOG_LEVELS}", err)
        configure_logging(args.log_level)
        if args.command == "check":
            return _check(args, out, err)
        if args.command == "explain":
            return _explain(args, out, err)
        if args.command == "compat-report":
            return _compat(args, out, err, sys.stdin if stdin is None else stdin)
        if args.command == "docs":
            if args.topic == "configmap":
                from controller.configmap import markdown as configmap_markdown

                out.write(configmap_markdown())
                return EXIT_OK
            from controller.compiler.catalogue import markdown

            out.write(markdown())
            return EXIT_OK
        return _echo(args, err)
    except SettingsError as exc:
        return _fail(str(exc), err)
