"""The compiler: store contents in, routing snapshot and problems out.

`compile_view` is the pure, total function the reconciler and `portico explain` call; `Compiler`
gives the same output incrementally: it caches each Ingress's validated part and each TLS
Secret's check by object identity, and when only EndpointSlices changed since its last call it
rebuilds just the affected backends and reuses the compiled routes (the very same RouteTable
object, so the publisher can send an endpoints-only update). Time is an input too: a result
holds only while no certificate it checked has crossed its `notBefore` or `notAfter`
(`CompileResult.refresh_at` says when the next one does, for the reconciler to schedule a
compile); past that, even an unchanged store is compiled in full again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from controller.compiler.backends import BackendUse, resolve_backend
from controller.compiler.basicauth import basic_auth_step
from controller.compiler.headers import request_headers, response_headers
from controller.compiler.ingress import IngressPart, assemble, classify, compile_ingress
from controller.compiler.problems import SECRET_INVALID, Problem
from controller.compiler.settings import CompileSettings
from controller.compiler.tls import (
    LoadedCertificate,
    check_validity,
    load_ca_bundle,
    load_certificate,
    validity_window,
)
from controller.objects import ConfigMap, Ingress, IngressClass, Secret
from controller.store import Store
from proxy.config import Backend, BasicAuth, MatchKind, ResponseHeaders, Snapshot

__all__ = [
    "CompileResult",
    "CompileSettings",
    "Compiler",
    "Problem",
    "compile_view",
]

logger = logging.getLogger(__name__)

_NO_TIME = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class CompileResult:
    snapshot: Snapshot
    problems: tuple[Problem, ...]  # sorted by (kind, ref, reason, message)
    owned: tuple[str, ...]  # refs of the Ingresses that are ours, sorted
    ignored: Mapping[str, str] = field(default_factory=dict)  # ref -> why it is not ours
    # Provenance kept out of the snapshot (workers never need it): (host, path, match) of each
    # routed path rule -> its path as written in the Ingress, which `portico explain` reports.
    written_paths: Mapping[tuple[str, str, MatchKind], str] = field(default_factory=dict)
    # Unix time from which time alone may change this result: the next `notBefore`/`notAfter`
    # of a certificate it checked. None: no certificate will change validity.
    refresh_at: float | None = None


def _precedence(ingress: Ingress) -> tuple[datetime, str]:
    # Oldest first; an Ingress without a creationTimestamp (a manifest file) sorts after all
    # dated ones; ties by namespace/name.
    return (ingress.creation_timestamp or _NO_TIME, ingress.ref)


class Compiler:
    """Incremental compiler; `compile(store)` equals `compile_view(store, settings)`."""

    def __init__(self, settings: CompileSettings) -> None:
        self.settings = settings
        self._parts: dict[tuple[str, str], tuple[Ingress, IngressPart]] = {}
        self._certs: dict[tuple[str, str], tuple[Secret | None, LoadedCertificate | str]] = {}
        self._store_id: int | None = None
        self._revision = -1
        self._routes_revision = -1
        self._last: CompileResult | None = None
        # Open interval of Unix times in which `_last` holds as far as certificate validity goes.
        self._window = (-math.inf, math.inf)
        self._backends: dict[str, Backend] = {}
        self._uses_by_service: dict[tuple[str, str], list[BackendUse]] = {}

    def compile(self, store: Store, *, now: datetime | None = None) -> CompileResult:
        """The next result; endpoints-only changes reuse the previous routes.

        `now` (default: the current time) decides certificate validity. Once it leaves the
        window in which the previous result's certificate checks hold (a certificate expired or
        became valid, or the clock was stepped back over such a moment), the compile is a full
        one even with no object changed; cached parts and loaded certificates are still reused,
        only their checks run again.
        """
        moment = now or datetime.now(UTC)
        last = self._last
        since, until = self._window
        if (
            last is not None
            and self._store_id == store.id
            and store.routes_revision == self._routes_revision
            and since < moment.timestamp() < until
        ):
            if store.revision == self._revision:
                return last
            return self._update_endpoints(store, last)
        return self._full(store, moment)

    # ---- full compile ---------------------------------------------------------------------------

    def _part(self, ingress: Ingress) -> IngressPart:
        key = (ingress.namespace, ingress.name)
        cached = self._parts.get(key)
        if cached is not None and cached[0] is ingress:
            return cached[1]
        settings = self.settings
        part = compile_ingress(
            ingress,
            serve_without_access_control=settings.serve_without_access_control,
            ssl_redirect=settings.ssl_redirect,
            source_ranges=(
                None if settings.invalid_allow_source_ranges else settings.allow_source_ranges,
                None if settings.invalid_deny_source_ranges else settings.deny_source_ranges,
            ),
            global_access_denied=bool(settings.unenforced_global_access)
            and not settings.serve_without_access_control,
            ssl_passthrough=settings.ssl_passthrough,
            service_upstream=settings.service_upstream,
            global_auth=settings.global_auth,
            limit_statuses=(settings.limit_req_status_code, settings.limit_conn_status_code),
            limit_rate=(settings.limit_rate, settings.limit_rate_after),
        )
        self._parts[key] = (ingress, part)
        return part

    def _global_access(self, parts: list[IngressPart]) -> None:
        """Access control for every Ingress that Portico does not enforce (the ingress-nginx
        ConfigMap's block-cidrs, ...; its problem is the ConfigMap's): each
        part's routes already answer 403 (`compile_ingress`'s `global_access_denied`: fail
        closed with an answer, so no request falls through to another route), unless the
        operator chose to serve without it, which is logged like an Ingress's own unenforced
        annotations."""
        if self.settings.serve_without_access_control:
            logger.warning(
                "compiler.access_control_not_enforced",
                extra={
                    "configmap_keys": list(self.settings.unenforced_global_access),
                    "ingresses": len(parts),
                    "served": True,
                    "setting": "--serve-without-access-control",
                },
            )

    def _certificate(self, store: Store, namespace: str, name: str) -> LoadedCertificate | str:
        obj = store.get("Secret", namespace, name)
        secret = obj if isinstance(obj, Secret) else None
        key = (namespace, name)
        cached = self._certs.get(key)
        if cached is not None and cached[0] is secret:
            return cached[1]
        loaded = load_certificate(secret, f"{namespace}/{name}")
        self._certs[key] = (secret, loaded)
        return loaded

    def _full(self, store: Store, now: datetime) -> CompileResult:
        settings = self.settings
        classes = {c.name: c for c in store.objects("IngressClass") if isinstance(c, IngressClass)}
        ours: list[Ingress] = []
        ignored: dict[str, str] = {}
        for obj in store.objects("Ingress"):
            if not isinstance(obj, Ingress):
                continue
            why = classify(obj, classes, settings)
            if why is None:
                ours.append(obj)
            else:
                ignored[obj.ref] = why
        ours.sort(key=_precedence)
        parts = [self._part(i) for i in ours]
        if settings.unenforced_global_access:
            self._global_access(parts)
        for part in parts:
            if part.unprotected:
                # Loud on purpose: the operator chose to expose these routes unprotected.
                logger.warning(
                    "compiler.access_control_not_enforced",
                    extra={
                        "ingress": part.ref,
                        "annotations": list(part.unprotected),
                        "served": True,
                        "setting": "--serve-without-access-control",
                    },
                )
        # Drop cache entries of Ingresses that are gone or no longer ours.
        live = {(i.namespace, i.name) for i in ours}
        for key in [k for k in self._parts if k not in live]:
            del self._parts[key]
        referenced: set[tuple[str, str]] = set()
        # Every certificate whose validity this compile checks narrows the window the result
        # holds in (one then left unused, e.g. not covering its host, narrows it more than
        # needed: an extra compile with the same output).
        since, until = -math.inf, math.inf

        def certificate(namespace: str, name: str) -> LoadedCertificate | str:
            nonlocal since, until
            referenced.add((namespace, name))
            loaded = self._certificate(store, namespace, name)
            if not isinstance(loaded, str):
                start, end = validity_window(loaded, now)
                since, until = max(since, start), min(until, end)
            return loaded

        def ca_bundle(ref: str) -> tuple[str | None, str | None]:
            namespace, _, name = ref.partition("/")
            referenced.add((namespace, name))
            obj = store.get("Secret", namespace, name)
            return load_ca_bundle(obj if isinstance(obj, Secret) else None, ref)

        def configmap(ref: str) -> dict[str, str] | None:
            namespace, _, name = ref.partition("/")
            obj = store.get("ConfigMap", namespace, name)
            return obj.data if isinstance(obj, ConfigMap) else None

        def custom_headers(ref: str) -> ResponseHeaders | str | None:
            return response_headers(configmap(ref), settings.allowed_response_headers)

        def auth_headers(
            ref: str,
        ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[Problem, ...]] | None:
            data = configmap(ref)
            return None if data is None else request_headers(data, ref)

        def basic_auth(
            ref: str, secret_type: str, realm: str
        ) -> tuple[BasicAuth | None, str | None]:
            namespace, _, name = ref.partition("/")
            referenced.add((namespace, name))
            obj = store.get("Secret", namespace, name)
            secret = obj if isinstance(obj, Secret) else None
            return basic_auth_step(secret, ref, secret_type, realm)

        names: tuple[str, ...] = ()
        values: tuple[str, ...] = ()
        header_problems: tuple[Problem, ...] = ()
        if settings.proxy_set_headers is not None:
            names, values, header_problems = request_headers(
                configmap(settings.proxy_set_headers), settings.proxy_set_headers
            )
        assembly = assemble(
            parts,
            certificate,
            now,
            ca_bundle,
            response_headers=custom_headers,
            request_headers=(names, values),
            auth_headers=auth_headers,
            basic_auth=basic_auth,
        )
        problems = [*assembly.problems, *header_problems]
        certificates = assembly.certificates
        default_certificate: str | None = None
        if settings.default_certificate:
            ns, _, name = settings.default_certificate.partition("/")
            loaded = certificate(ns, name)
            reason = loaded if isinstance(loaded, str) else check_validity(loaded, now)
            if reason is not None or isinstance(loaded, str):
                problems.append(
                    Problem("Secret", settings.default_certificate, SECRET_INVALID, f"{reason}")
                )
            else:
                default_certificate = loaded.certificate.name
                if all(c.name != default_certificate for c in certificates):
                    certificates = tuple(
                        sorted((*certificates, loaded.certificate), key=lambda c: c.name)
                    )
        for key in [k for k in self._certs if k not in referenced]:
            del self._certs[key]

        backends: dict[str, Backend] = {}
        by_service: dict[tuple[str, str], list[BackendUse]] = {}
        for backend_key in sorted(assembly.uses):
            use = assembly.uses[backend_key]
            backend, backend_problems = resolve_backend(store, use, settings)
            backends[backend_key] = backend
            problems.extend(backend_problems)
            by_service.setdefault((use.namespace, use.service), []).append(use)

        snapshot = Snapshot(
            routes=assembly.routes,
            backends=tuple(backends.values()),  # keys were visited sorted
            certificates=certificates,
            default_certificate=default_certificate,
            passthrough=assembly.passthrough,
        )
        result = CompileResult(
            snapshot=snapshot,
            problems=tuple(sorted(set(problems))),
            owned=tuple(sorted(i.ref for i in ours)),
            ignored=dict(sorted(ignored.items())),
            written_paths=assembly.written_paths,
            refresh_at=until if until < math.inf else None,
        )
        self._window = (since, until)
        self._store_id = store.id
        self._revision = store.revision
        self._routes_revision = store.routes_revision
        self._backends = backends
        self._uses_by_service = by_service
        self._last = result
        logger.debug(
            "compiler.full",
            extra={
                "ingresses": len(ours),
                "ignored": len(ignored),
                "virtual_hosts": len(snapshot.routes.virtual_hosts),
                "backends": len(backends),
                "problems": len(result.problems),
            },
        )
        return result

    # ---- endpoints only -------------------------------------------------------------------------

    def _update_endpoints(self, store: Store, last: CompileResult) -> CompileResult:
        changed = store.endpoint_changes_since(self._revision)
        rebuilt = 0
        for svc in changed:
            for use in self._uses_by_service.get(svc, ()):
                # Problems depend on the Service alone, which has not changed: keep the old ones.
                backend, _ = resolve_backend(store, use, self.settings)
                self._backends[use.key] = backend
                rebuilt += 1
        self._revision = store.revision
        if rebuilt == 0:
            return last
        snapshot = Snapshot(
            routes=last.snapshot.routes,
            backends=tuple(self._backends.values()),
            certificates=last.snapshot.certificates,
            default_certificate=last.snapshot.default_certificate,
            passthrough=last.snapshot.passthrough,
        )
        result = replace(last, snapshot=snapshot)
        self._last = result
        logger.debug("compiler.endpoints", extra={"services": len(changed), "backends": rebuilt})
        return result


def compile_view(
    store: Store, settings: CompileSettings, *, now: datetime | None = None
) -> CompileResult:
    """Compile everything from scratch: pure (given `now`), total, deterministic."""
    return Compiler(settings).compile(store, now=now)
