"""Schema linking: the tables of a database a question needs, so that a prompt can carry only those.

Lexical and recall-first (a table left out of the prompt cannot be queried, a table too many only
costs tokens), in the spirit of the name-matching schema linking of IRNet (Guo et al. 2019,
"Towards Complex Text-to-SQL in Cross-Domain Database with Intermediate Representation", section
2.2) and RAT-SQL (Wang et al. 2020, section 3.3), without their learned parts:

1. the question and every table and column name are split into words (snake_case, camelCase,
   digits), lower-cased and reduced to a crude singular (:func:`words`);
2. a table is linked when a word of its name, or of one of its columns' names that is not a
   generic word (``id``, ``name``, ``code``...; :data:`GENERIC`), occurs in the question, or when a
   question word of 4+ letters occurs inside one of those words (``countrylanguage`` for
   "languages");
3. linked tables are joined up: the tables on a shortest foreign-key path between two linked
   tables are added (the join a question implies needs the bridge table);
4. ``neighbours=1`` adds every table one foreign key away from a linked one;
5. nothing linked -> every table.

:func:`sql_tables_columns` reads what a gold query uses (sqlglot), to measure the linking's recall
(``bench/schema_linking.py``). Everything here is pure: names in, names out.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["GENERIC", "link_tables", "sql_tables_columns", "words"]

#: Column-name words that say nothing about which table a question means.
GENERIC: frozenset[str] = frozenset({
    "id", "name", "code", "type", "no", "num", "number", "the", "of", "a", "an", "is", "by", "in", "to", "and",
    "for", "on", "at", "date", "detail", "details", "description", "other", "value", "status",
})

_SPLIT = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def _singular(w: str) -> str:
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("sses", "xes", "ches", "shes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def words(text: str) -> set[str]:
    """The words of a question or an identifier: split at non-letters, snake_case and camelCase,
    lower-cased, crude singulars.

    >>> sorted(words("How many countryLanguage rows have Official_Language = 'T'?"))
    ['country', 'have', 'how', 'language', 'many', 'official', 'row', 't']
    >>> sorted(words("Singer_in_concert"))
    ['concert', 'in', 'singer']
    >>> sorted(words("What are the cities and the companies?"))
    ['and', 'are', 'city', 'company', 'the', 'what']
    """
    return {_singular(m.group(0).lower()) for m in _SPLIT.finditer(text)}


def _hits(name_words: set[str], q: set[str]) -> bool:
    if name_words & q:
        return True
    joined = "".join(sorted(name_words))
    return any(len(w) >= 4 and (w in joined or any(w in n for n in name_words)) for w in q)


def link_tables(
    question: str,
    tables: Mapping[str, Sequence[str]],
    foreign_keys: Iterable[tuple[str, str, str, str | None]] = (),
    *,
    neighbours: int = 0,
) -> list[str]:
    """The tables ``question`` needs, in the order of ``tables`` (see the module docstring).

    Args:
        question: the natural-language question.
        tables: table name -> its column names (e.g. ``{t.name: t.column_names for t in schema.tables}``).
        foreign_keys: ``(table, column, ref_table, ref_column)`` (``tools.schema.Schema.foreign_keys``).
        neighbours: add the tables up to this many foreign keys away from a linked table (0 or 1).

    Raises:
        ValueError: ``neighbours`` outside 0..1, or no tables.

    >>> db = {"singer": ["Singer_ID", "Name", "Age"], "concert": ["concert_ID", "Year", "Stadium_ID"],
    ...       "singer_in_concert": ["concert_ID", "Singer_ID"], "stadium": ["Stadium_ID", "Capacity"]}
    >>> fks = [("singer_in_concert", "Singer_ID", "singer", "Singer_ID"),
    ...        ("singer_in_concert", "concert_ID", "concert", "concert_ID"),
    ...        ("concert", "Stadium_ID", "stadium", "Stadium_ID")]
    >>> link_tables("How many singers are there?", db, fks)  # the link table's name says singer too
    ['singer', 'singer_in_concert']
    >>> link_tables("Names of singers who sang in a concert in 2014", db, fks)
    ['singer', 'concert', 'singer_in_concert']
    >>> link_tables("What is the average age?", db, fks)
    ['singer']
    >>> link_tables("Show everything.", db, fks)  # nothing links: all tables
    ['singer', 'concert', 'singer_in_concert', 'stadium']
    >>> link_tables("Which stadium had the most capacity?", db, fks)  # concert has a Stadium_ID
    ['concert', 'stadium']
    >>> link_tables("Which stadium had the most capacity?", db, fks, neighbours=1)
    ['concert', 'singer_in_concert', 'stadium']
    """
    if neighbours not in (0, 1):
        raise ValueError(f"neighbours must be 0 or 1, got {neighbours}")
    if not tables:
        raise ValueError("no tables to link")
    q = words(question)
    lower = {t.lower(): t for t in tables}
    linked: set[str] = set()
    for t, cols in tables.items():
        if _hits(words(t), q):
            linked.add(t)
            continue
        for c in cols:
            specific = words(c) - GENERIC
            if specific and _hits(specific, q):
                linked.add(t)
                break
    if not linked:
        return list(tables)
    graph: dict[str, set[str]] = {t: set() for t in tables}
    for t, _, rt, _ in foreign_keys:
        a, b = lower.get(t.lower()), lower.get(rt.lower())
        if a and b and a != b:
            graph[a].add(b)
            graph[b].add(a)
    keep = set(linked)
    seeds = [t for t in tables if t in linked]
    for i, src in enumerate(seeds):  # shortest FK paths between linked tables
        prev = {src: src}
        todo = deque([src])
        while todo:
            u = todo.popleft()
            for v in sorted(graph[u]):
                if v not in prev:
                    prev[v] = u
                    todo.append(v)
        for dst in seeds[i + 1:]:
            if dst in prev:
                node = dst
                while node != src:
                    keep.add(node)
                    node = prev[node]
    if neighbours:
        keep |= {v for t in linked for v in graph[t]}
    return [t for t in tables if t in keep]


def sql_tables_columns(sql: str) -> tuple[set[str], set[tuple[str | None, str]]]:
    """The tables and columns a SQLite query reads, lower-cased, aliases resolved to table names:
    ``({table}, {(table or None when unqualified, column)})`` (sqlglot's SQLite parser).

    Raises:
        sqlglot.errors.ParseError: ``sql`` does not parse.

    >>> t, c = sql_tables_columns("SELECT T1.Name, count(*) FROM singer AS T1 JOIN singer_in_concert AS T2 "
    ...                           "ON T1.Singer_ID = T2.Singer_ID WHERE age > 20 GROUP BY T1.Name")
    >>> sorted(t)
    ['singer', 'singer_in_concert']
    >>> sorted(c, key=str)
    [('singer', 'name'), ('singer', 'singer_id'), ('singer_in_concert', 'singer_id'), (None, 'age')]
    """
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="sqlite")
    alias: dict[str, str] = {}
    tables: set[str] = set()
    for t in tree.find_all(exp.Table):
        name = t.name.lower()
        tables.add(name)
        alias[name] = name
        if t.alias:
            alias[t.alias.lower()] = name
    cols = {(alias.get(c.table.lower(), c.table.lower()) if c.table else None, c.name.lower())
            for c in tree.find_all(exp.Column) if c.name and c.name != "*"}
    return tables, cols
