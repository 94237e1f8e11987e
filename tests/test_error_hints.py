"""Schema hints on ``no such column`` / ``no such table`` errors (tools.error_hints), on real Spider
databases through the society's own executor summary, and the setting that turns them on."""

from __future__ import annotations

import pytest

from society.config import SocietyConfig
from society.toolkit import execute_summary
from tools.error_hints import name_hint
from tools.schema import load_schema
from tools.spider import default_data_dir, resolve_database
from training.reuse import config_part


def _db(db_id: str) -> str:
    return str(resolve_database(db_id, default_data_dir()))


# (database, a query a 0.5B model wrote on Spider dev, what the hint must say) -- the first three are
# the one-shot agent's own errors on the 2026-12-05 run's questions.
CASES = [
    ("concert_singer",
     "SELECT T2.Name, T2.Country FROM singer AS T1 JOIN singer_in_concert AS T2 ON T1.Singer_ID = T2.Singer_ID",
     ["T2 is singer_in_concert", "its columns: concert_ID, Singer_ID", "Name is a column of stadium, singer"]),
    ("pets_1", "SELECT PetType, AVG(Age), MAX(Age) FROM Pets GROUP BY PetType",
     ["none of the query's tables (Pets) has a column Age", "Age is a column of Student", "Pets.pet_age"]),
    ("car_1", "SELECT Model FROM model_list WHERE Horsepower = (SELECT MIN(Horsepower) FROM model_list)",
     ["Horsepower is a column of cars_data"]),
    ("concert_singer", "SELECT count(*) FROM singers", ["there is no table singers", "Similar: singer"]),
]


@pytest.mark.parametrize(("db_id", "sql", "says"), CASES)
def test_the_failed_query_carries_where_the_name_lives(db_id: str, sql: str, says: list[str]) -> None:
    ex = execute_summary(_db(db_id), sql, hints=True)
    assert not ex.ok and ex.error_category in {"no_such_column", "no_such_table"}
    for part in says:
        assert part in ex.hint, (part, ex.hint)
    assert ex.as_text() == f"ERROR ({ex.error_category}): {ex.error}\n{ex.hint}"


def test_no_hint_unless_asked_and_none_for_other_errors() -> None:
    sql = CASES[0][1]
    plain = execute_summary(_db("concert_singer"), sql)
    assert plain.hint is None and "\n" not in plain.as_text()
    syntax = execute_summary(_db("concert_singer"), "SELECT FROM WHERE", hints=True)
    assert not syntax.ok and syntax.hint is None
    ok = execute_summary(_db("concert_singer"), "SELECT count(*) FROM singer", hints=True)
    assert ok.ok and ok.hint is None


def test_an_unparsable_query_still_gets_the_owners_of_the_name() -> None:
    schema = load_schema(_db("pets_1"), sample_rows=0)
    hint = name_hint("SELECT PetType FROM Has_Pet WHERE (", "no such column: PetType", schema)
    assert hint == "Schema: PetType is a column of Pets."


def test_the_setting_is_config_and_old_runs_keep_their_hash() -> None:
    base = SocietyConfig.load("configs/society.yaml")
    assert base.execution.error_hints is False
    on = SocietyConfig.model_validate({**base.model_dump(by_alias=True), "execution": {"error_hints": True}})
    dump_off = config_part(base.model_dump(mode="json", by_alias=True))
    dump_on = config_part(on.model_dump(mode="json", by_alias=True))
    assert "error_hints" not in dump_off["execution"]  # hashed as before the setting existed
    assert dump_on["execution"]["error_hints"] is True and dump_on != dump_off
    with pytest.raises(ValueError, match="error_hint"):
        SocietyConfig.model_validate({**base.model_dump(by_alias=True), "execution": {"error_hint": True}})
