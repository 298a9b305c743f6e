"""The reconciler takes new compile settings and problems by origin while it runs.

This is how a change of the ingress-nginx ConfigMap reaches the compiler in cluster mode
(controller/app.py, `ConfigMapSettings`): new compile settings compile the unchanged store again,
and the ConfigMap's problems sit beside the objects' own without replacing them.
"""

from __future__ import annotations

import asyncio

import pytest

from controller.compiler import Compiler, CompileSettings, Problem
from controller.reconciler import Reconciler
from tests.kube_factory import ingress, ingress_class, rule, service, store_of

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0


async def test_new_compile_settings_recompile_the_same_store() -> None:
    store = store_of(ingress_class(), service("web"), ingress(class_name=None, rules=[rule("a")]))
    reconciler = Reconciler(store, Compiler(CompileSettings()))
    reconciler.mark_listed("Ingress")  # the sources' signal that the store is synced
    stream = reconciler.results()
    first = await asyncio.wait_for(anext(stream), WAIT)
    assert first.owned == ()  # no class, and not watched without one
    reconciler.set_compile_settings(CompileSettings(watch_ingress_without_class=True))
    second = await asyncio.wait_for(anext(stream), WAIT)
    assert second.owned == ("default/web",)
    # The same settings again change nothing: no compile, no result.
    reconciler.set_compile_settings(CompileSettings(watch_ingress_without_class=True))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(stream), 0.3)


async def test_problems_by_origin() -> None:
    store = store_of(ingress_class(), service("web"), ingress(rules=[rule("a")]))
    reconciler = Reconciler(store, Compiler(CompileSettings()))
    reconciler.mark_listed("Ingress")  # the sources' signal that the store is synced
    stream = reconciler.results()
    await asyncio.wait_for(anext(stream), WAIT)
    invalid = Problem("Ingress", "default/x", "InvalidObject", "bad")
    unknown = Problem("ConfigMap", "n/c", "UnknownConfigMapKey", "key x: ...")
    reconciler.set_source_problems((invalid,))
    reconciler.set_source_problems((unknown,), origin="configmap")
    result = await asyncio.wait_for(anext(stream), WAIT)
    while len(result.problems) < 2:  # the two may come in one result or two
        result = await asyncio.wait_for(anext(stream), WAIT)
    assert set(result.problems) == {invalid, unknown}
    # One origin's new list replaces its own problems only.
    reconciler.set_source_problems((), origin="configmap")
    result = await asyncio.wait_for(anext(stream), WAIT)
    assert result.problems == (invalid,)
