"""Every named query in sql/queries is used by the project's code (the packages, loadtests/,
bench/), and every name that code looks up (`queries().name`, `queries()["name"]`, or the same
through `q = queries()`) exists. Read with `ast`; SQL only a test uses belongs in that test."""

from __future__ import annotations

import ast

from revoc.queries import queries
from tests.codebase import PACKAGES, ROOT, modules

CODE = (*PACKAGES, "loadtests", "bench")


def _is_queries_call(node: ast.expr) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "queries")


def query_lookups(tree: ast.AST) -> set[tuple[str, int]]:
    """(name, line) of each query `tree` looks up: on a `queries()` call, or on a name assigned
    from one (`q = queries()`, `ctx, q = ..., queries()`: the project's habit)."""
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs = (zip(target.elts, node.value.elts, strict=False)
                     if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
                     else [(target, node.value)])
            aliases |= {t.id for t, v in pairs
                        if isinstance(t, ast.Name) and _is_queries_call(v)}

    def is_queries(node: ast.expr) -> bool:
        return _is_queries_call(node) or (isinstance(node, ast.Name) and node.id in aliases)

    used: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_queries(node.value):
            used.add((node.attr, node.lineno))
        elif isinstance(node, ast.Subscript) and is_queries(node.value):
            key = node.slice
            assert isinstance(key, ast.Constant) and isinstance(key.value, str), (
                f"line {node.lineno}: a query looked up by a computed name cannot be checked")
            used.add((key.value, node.lineno))
    return used


def _used_in_code() -> dict[str, list[str]]:
    used: dict[str, list[str]] = {}
    for module in modules(ROOT, CODE).values():
        for name, line in query_lookups(module.tree):
            used.setdefault(name, []).append(f"{module.path.relative_to(ROOT)}:{line}")
    return used


def test_every_named_query_is_used() -> None:
    assert sorted(set(queries()) - set(_used_in_code())) == []


def test_every_query_name_used_exists() -> None:
    missing = {name: places for name, places in _used_in_code().items()
               if name not in queries()}
    assert missing == {}


def test_the_scan_sees_every_lookup_form() -> None:
    source = ("def f(conn, ctx):\n"
              "    q = queries()\n    conn.fetch(q.a)\n    conn.fetch(q['b'])\n"
              "    conn.fetch(queries().c)\n    conn.fetch(queries()['d'])\n"
              "    c, r = ctx, queries()\n    conn.fetch(r.e)\n    other.f\n    c.g\n")
    assert {name for name, _ in query_lookups(ast.parse(source))} == {"a", "b", "c", "d", "e"}
