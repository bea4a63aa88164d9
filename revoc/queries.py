"""Named SQL from ``sql/queries/*.sql``, so no SQL is assembled in Python.

File format (as in procrastinate): a block starts at a line ``-- name: some_name``
and runs until the next such line. Comments and blank lines before the first
block are a file header; any other text there is an error, because it would be
SQL that no name can reach. Names are unique across all files: two queries with
one name would make it a matter of load order which one runs.

    from revoc.queries import queries
    await conn.fetch(queries().schema_versions)   # or queries()["schema_versions"]
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["Queries", "QueryFileError", "UnknownQueryError", "parse", "queries", "sql_dir"]

_NAME_LINE = re.compile(r"^--\s*name:\s*(?P<name>\S+)\s*$")
_VALID_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class QueryFileError(ValueError):
    """A query file is malformed (bad name, duplicate, stray SQL, empty block)."""


class UnknownQueryError(KeyError, AttributeError):
    """No query has this name.

    A KeyError for ``queries()["x"]`` and an AttributeError for ``queries().x``,
    so ``hasattr`` and ``getattr(..., default)`` keep working.
    """

    def __str__(self) -> str:
        # KeyError would repr() the message and wrap it in quotes.
        return str(self.args[0])


class Queries(Mapping[str, str]):
    """An immutable mapping name -> SQL text, also readable as attributes."""

    def __init__(self, sql_by_name: Mapping[str, str], source: str = "<memory>") -> None:
        self._sql = dict(sql_by_name)
        self._source = source

    @classmethod
    def load(cls, directory: Path) -> Queries:
        """Parse every ``*.sql`` file of ``directory`` (sorted, so errors are stable)."""
        directory = Path(directory)
        files = sorted(directory.glob("*.sql"))
        if not files:
            raise QueryFileError(f"no *.sql query files in {directory}")
        sql: dict[str, str] = {}
        origin: dict[str, Path] = {}
        for path in files:
            for name, text in parse(path.read_text(encoding="utf-8"), path):
                if name in sql:
                    raise QueryFileError(
                        f"query {name!r} is defined twice: in {origin[name]} and in {path}"
                    )
                sql[name] = text
                origin[name] = path
        return cls(sql, str(directory))

    def __getitem__(self, name: str) -> str:
        try:
            return self._sql[name]
        except KeyError:
            raise UnknownQueryError(
                f"no SQL query named {name!r} in {self._source} "
                f"(known: {', '.join(sorted(self._sql)) or 'none'})"
            ) from None

    def __getattr__(self, name: str) -> str:
        # Dunder and private lookups (copy, pickle, repr machinery) must not
        # masquerade as queries.
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sql)

    def __len__(self) -> int:
        return len(self._sql)

    def __repr__(self) -> str:
        return f"Queries({self._source!r}, {len(self._sql)} queries)"


def parse(text: str, path: Path | str = "<string>") -> list[tuple[str, str]]:
    """Split one file's text into (name, sql) blocks, in file order."""
    blocks: list[tuple[str, list[str]]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        match = _NAME_LINE.match(line.strip())
        if match:
            name = match["name"]
            if not _VALID_NAME.match(name):
                raise QueryFileError(
                    f"{path}:{lineno}: query name {name!r} must be lower_snake_case"
                )
            blocks.append((name, []))
        elif blocks:
            blocks[-1][1].append(line)
        elif line.strip() and not line.lstrip().startswith("--"):
            raise QueryFileError(f"{path}:{lineno}: SQL before the first '-- name:' line")
    result: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, lines in blocks:
        body = "\n".join(lines).strip()
        if not _has_sql(body):
            raise QueryFileError(f"{path}: query {name!r} has no SQL")
        if name in seen:
            raise QueryFileError(f"{path}: query {name!r} is defined twice")
        seen.add(name)
        result.append((name, body))
    return result


def _has_sql(body: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in body.splitlines())


def sql_dir() -> Path:
    """Where the SQL lives: ``revoc/_sql`` in a wheel, ``<repo>/sql`` in a checkout.

    pyproject force-includes ``sql`` as ``revoc/_sql`` in the wheel because a
    top-level ``sql`` directory would not be installed; an editable or source
    checkout has only the repository's ``sql``.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "_sql", package.parent / "sql"):
        if (candidate / "migrations").is_dir():
            return candidate
    raise QueryFileError(
        f"no SQL directory: neither {package / '_sql'} nor {package.parent / 'sql'}"
    )


@functools.cache
def queries() -> Queries:
    """All queries of the installed ``sql/queries``, loaded once per process."""
    return Queries.load(sql_dir() / "queries")
