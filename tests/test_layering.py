"""The layering of ARCHITECTURE.md "Code layout", read from the source with `ast`: no import
cycle among the packages' modules (lazy imports inside functions count), the DER codecs import
nothing else of revoc, the two applications never import each other and only revoc/cli.py
composes them, and one module (revoc/notify.py) owns every NOTIFY payload. No test module
imports another one: shared code lives in conftest.py or helper modules not named test_*."""

from __future__ import annotations

import ast
from pathlib import Path

from revoc.notify import (
    CERT_CHANGED,
    CRL_PUBLISHED,
    OCSP_CHANGED,
    CrlPublished,
    SerialChange,
    decode_crl_published,
    decode_serial_change,
    encode_crl_published,
    encode_serial_change,
)
from tests.codebase import ROOT, Module, cycles, import_graph, imported_names, modules

APPLICATIONS = ("responder", "crl_publisher")
COMPOSER = "revoc.cli"


def _top(name: str) -> str:
    return name.split(".")[0]


def test_no_import_cycle_among_the_packages() -> None:
    assert cycles(import_graph(modules())) == []


def test_the_cycle_check_finds_a_cycle_through_a_lazy_import(tmp_path: Path) -> None:
    """The check itself: a cycle closed by an import inside a function is reported."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import helper\n")
    (package / "b.py").write_text("def helper() -> None:\n    from pkg import a\n")
    (package / "c.py").write_text("from . import a\n")
    graph = import_graph(modules(tmp_path, ("pkg",)))
    assert graph["pkg.c"] == {"pkg", "pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_der_codecs_import_nothing_else_of_revoc() -> None:
    """revoc/der/ is pure DER in, DER out (STYLE habit 3): its types live in revoc/der/types.py."""
    found = modules()
    offending = [
        f"{module.path.relative_to(ROOT)}:{line} imports {target}"
        for name, module in found.items() if name.startswith("revoc.der")
        for target, line in imported_names(module)
        if _top(target) in ("revoc", *APPLICATIONS) and not target.startswith("revoc.der")
        and target != "revoc"
    ]
    assert offending == []


def test_applications_never_import_each_other_and_only_the_cli_composes_them() -> None:
    found = modules()
    offending: list[str] = []
    for name, module in found.items():
        targets = {_top(t): line for t, line in imported_names(module)}
        where = module.path.relative_to(ROOT)
        top = _top(name)
        if top in APPLICATIONS:
            other = next(a for a in APPLICATIONS if a != top)
            if other in targets:
                offending.append(f"{where}:{targets[other]} imports {other}")
        elif name != COMPOSER:
            offending += [f"{where}:{targets[a]} imports {a}" for a in APPLICATIONS
                          if a in targets]
    assert offending == []


def test_command_modules_use_the_runtime_not_the_composer() -> None:
    """responder/ and crl_publisher/ reach shared command plumbing through revoc/runtime.py;
    importing revoc/cli.py back is what made the cycle of issue 12."""
    offending = [
        f"{module.path.relative_to(ROOT)}:{line}"
        for name, module in modules().items() if name != COMPOSER
        for target, line in imported_names(module) if target == COMPOSER
        or target.startswith(COMPOSER + ".")
    ]
    assert offending == []


# ------------------------------------------------------------------ NOTIFY: one codec


def test_notify_payloads_round_trip() -> None:
    serial = bytes.fromhex("00ff10")
    assert decode_serial_change(encode_serial_change(7, serial)) == SerialChange(7, serial)
    assert decode_serial_change(encode_serial_change(7, None)) == SerialChange(7, None)
    published = encode_crl_published(3, 2, "delta", 41)
    assert decode_crl_published(published) == CrlPublished(3, 2, "delta", 41)
    for junk in ("", "7", "x:AB", "7:", "7:zz", "1:2:3"):
        assert decode_serial_change(junk) is None, junk
    assert decode_crl_published("1:2:full") is None


def _string_constants(module: Module) -> list[tuple[str, int]]:
    return [(node.value, node.lineno) for node in ast.walk(module.tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_only_revoc_notify_names_the_channels_and_builds_payloads() -> None:
    """Channel names appear as literals in revoc/notify.py only (elsewhere: its constants; in
    docstrings they are prose), and no other module formats or splits a `<id>:<...>` payload."""
    channels = {CERT_CHANGED, OCSP_CHANGED, CRL_PUBLISHED}
    offending: list[str] = []
    for name, module in modules().items():
        if name == "revoc.notify":
            continue
        where = module.path.relative_to(ROOT)
        offending += [f"{where}:{line} names channel {value!r}"
                      for value, line in _string_constants(module) if value in channels]
        for node in ast.walk(module.tree):
            # payload.partition(":") / payload.split(":"): a second parser of a payload
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("partition", "split", "rpartition", "rsplit")
                    and isinstance(node.func.value, ast.Name)
                    and "payload" in node.func.value.id):
                offending.append(f"{where}:{node.lineno} parses a payload")
    assert offending == []


# ------------------------------------------------------------------ tests import no test module


def test_no_test_module_imports_another() -> None:
    tests = modules(ROOT, ("tests",))
    offending = [
        f"{module.path.relative_to(ROOT)}:{line} imports {target}"
        for module in tests.values()
        for target, line in imported_names(module)
        if target in tests and target.split(".")[-1].startswith("test_")
    ]
    assert offending == []


def test_helper_modules_are_not_named_like_tests() -> None:
    """pytest collects test_*.py: a helper named so runs as a (test-less) test file."""
    helpers = [p.name for p in (ROOT / "tests").glob("test_*.py")
               if not any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                          and n.name.startswith("test") for n in ast.walk(
                              ast.parse(p.read_text(encoding="utf-8"))))]
    assert helpers == []
