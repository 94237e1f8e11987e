"""Reusing what depends only on the base model: the untrained stages' evaluations, across runs.

The baseline evaluations of a training run (the society before phase 1, the juniors-only and
senior-only baselines, the juniors' noise-control repeat) run the untrained model: two runs with
the same model file, society config, prompts, sampling and questions produce them alike. A run
whose profile names earlier runs (``reuse_from``) takes such a stage from the first of them that
has it, instead of evaluating it again -- only when every part of its :class:`Fingerprint`
matches, by content hash:

==========  ==========================================================================================
part        what is hashed (sha256 of canonical JSON, :func:`sha256_json`)
==========  ==========================================================================================
model       the serving engine and, per embedded model the society uses, the sha256 of its GGUF
            file (:func:`file_sha256`, cached by path, size and mtime)
config      the resolved society config: each role's model alias replaced by what it serves, the
            ``models`` map, the config's ``name``, its ``llm`` client settings (timeouts, retries)
            and every role's ``sampling`` left out (the last is its own part)
prompts     every prompt template (:data:`society.prompts.PROMPTS`, the persona -> prompt map, the
            hint texts) and the schema text each question's database is shown as
sampling    each role's sampling settings (temperature, max_tokens, seed, stop, ...)
questions   the stage's questions in order (id, database, question, gold SQL) and, for the senior,
            the SQL it is given
==========  ==========================================================================================

A source that has the stage but differs in any part is **refused** (:class:`ReuseRefused`, the
message names each differing part and the two hashes): the run stops before spending CPU, so a
stage is never made of one run's records and another's settings. A source without the stage is
passed over; a stage no source has is evaluated as usual. What was reused and from where is
written beside the stage (``<stage>.reused.json``) and shown in the report.

A source stage on more questions is used for this stage's questions when it holds every one of them
and it is what this run would have made on all of its questions: the caller fingerprints this run's
settings on the source's questions (their ids read from its records, :func:`holds_questions`) and
every part must equal the source's. A society baseline of 100 questions drawn with seed 0 lies inside
one of 300 drawn with the same seed (checked on Spider dev: 100 and 200 lie inside 300, while 20, 50
or 80 do not, since ``random.Random(seed).sample`` picks its method by size), so a default-profile
run takes its 100 from a ``long`` run's 300. Only those questions' records are taken. Stages that
give the role a query (the senior's) match only whole.

Phase 3's first step (the repair selection and the base senior's prefilter) also runs only the untrained
senior on the store's queries: a run whose store was copied takes that step from the source run when the
source finished it with the same phase-3 key (``grpo`` settings, reward, senior prompts;
:func:`training.phase_grpo.reused_select`).

Not hashed (the same in both runs is assumed, and said in the report's note): the code that
parses and scores answers, the llama-server build and its slot/batch settings (at temperature > 0
with a fixed seed the server's sampling is repeatable per request; batching may still move a
token), the executor's limits. A question taken from a larger stage was answered among other
questions (its neighbours in the server's prompt cache and batches differ); taken whole, a stage's
context is the same.

Functions here are small and pure where they can be (doctests); they read no model and no database:
the caller finds the GGUF files (:func:`used_models` names them) and reads each database's schema text
as the society shows it (:func:`schema_settings`), and :func:`model_part` / :func:`society_parts` hash
what they are given (:mod:`training.stage_plan` does both for a run).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from society import prompts
from society.roles import ROLE_TYPES
from tools.examples import shown_for
from tools.files import atomic_write_text, read_jsonl

__all__ = [
    "PARTS",
    "Fingerprint",
    "NotReusable",
    "ReuseMatch",
    "ReuseRefused",
    "config_part",
    "copy_questions",
    "copy_stage",
    "copy_store",
    "default_hash_cache",
    "differing_parts",
    "file_sha256",
    "find_reusable",
    "fingerprint_path",
    "gather_files",
    "holds_questions",
    "stage_files",
    "model_part",
    "prompt_registry",
    "question_rows",
    "reused_path",
    "sampling_part",
    "schema_settings",
    "sha256_json",
    "society_parts",
    "used_models",
]

#: The parts of a fingerprint, in the order messages name them.
PARTS: tuple[str, ...] = ("model", "config", "prompts", "sampling", "questions")

#: Environment variable naming the file-hash cache (default :func:`default_hash_cache`).
HASH_CACHE_ENV = "SQLSOCIETY_HASH_CACHE"


class ReuseRefused(ValueError):
    """A reuse source holds the stage but was made with other settings; the message names the stage,
    the source, every differing part and what to do."""


class NotReusable(ValueError):
    """The stage cannot be fingerprinted (a remote model whose weights cannot be hashed, a trained
    adapter routed in, an engine whose served weights are not the GGUF file); it is evaluated here."""


# ----------------------------------------------------------------------------- hashing


def sha256_json(value: Any) -> str:
    """sha256 (hex) of ``value`` as canonical JSON: keys sorted, no spaces, UTF-8, non-JSON values
    as ``str``. Equal values give equal hashes whatever the dict order.

    >>> sha256_json({"b": 1, "a": [1, 2]}) == sha256_json({"a": [1, 2], "b": 1})
    True
    >>> sha256_json({"a": 1}) == sha256_json({"a": 1.5})
    False
    >>> len(sha256_json(None))
    64
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_hash_cache() -> Path:
    """The file-hash cache: ``$SQLSOCIETY_HASH_CACHE`` if set, else ``~/.cache/sqlsociety/sha256.json``."""
    env = os.environ.get(HASH_CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sqlsociety" / "sha256.json"


def _stat_key(path: Path) -> str:
    """``"<resolved path>|<size>|<mtime_ns>"``: what a cached hash is valid for."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def file_sha256(path: str | os.PathLike[str], *, cache: str | os.PathLike[str] | None = None,
                chunk: int = 4 << 20) -> str:
    """sha256 (hex) of a file's bytes, remembered in a JSON cache keyed by the resolved path, the
    size and the mtime (ns), so a 400 MB GGUF is read once until it changes.

    Args:
        path: the file.
        cache: the cache file (default :func:`default_hash_cache`); created with its directory,
            written atomically under a file lock (two processes may hash at once).
        chunk: bytes read at a time.

    Raises:
        FileNotFoundError: ``path`` is not a file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"cannot hash {p}: not a file")
    cache_path = Path(cache) if cache is not None else default_hash_cache()
    key = _stat_key(p)
    known = _read_cache(cache_path)
    if key in known:
        return known[key]
    h = hashlib.sha256()
    with p.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    if _stat_key(p) == key:  # unchanged while read: safe to remember
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cache_path) + ".lock"):
            entries = _read_cache(cache_path)
            entries[key] = digest
            atomic_write_text(cache_path, json.dumps(entries, indent=1, sort_keys=True) + "\n")
    return digest


def _read_cache(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


# ----------------------------------------------------------------------------- the parts


#: Society settings added after runs were recorded: ``(section, key, value that keeps the old
#: behaviour)``. At that value the key is left out of the hash, so a run made before the setting
#: existed keeps its fingerprints (and stays reusable); any other value is hashed.
ADDED_SETTINGS: tuple[tuple[str, str, Any], ...] = (("execution", "error_hints", False),)


def config_part(config: Mapping[str, Any]) -> dict[str, Any]:
    """The society config as the ``config`` part hashes it: each role's ``model`` alias replaced by
    the alias's spec (so routing the juniors to an alias of their own changes nothing while it
    serves the same model), and ``models``, ``name``, ``llm`` and each role's ``sampling`` dropped;
    a setting of :data:`ADDED_SETTINGS` at its old-behaviour value is left out.

    Args:
        config: ``SocietyConfig.model_dump(mode="json", by_alias=True)``.

    >>> cfg = {"name": "a", "models": {"juniors": {"embedded": "m"}, "junior_policy": {"embedded": "m"}},
    ...        "llm": {"timeout_s": 1}, "limits": {"max_review_rounds": 2},
    ...        "roles": [{"name": "j", "model": "juniors", "sampling": {"temperature": 0.3}}]}
    >>> config_part(cfg)
    {'limits': {'max_review_rounds': 2}, 'roles': [{'name': 'j', 'model': {'embedded': 'm'}}]}
    >>> moved = {**cfg, "name": "b", "roles": [{**cfg["roles"][0], "model": "junior_policy"}]}
    >>> config_part(moved) == config_part(cfg)
    True
    >>> config_part({**cfg, "execution": {"max_rows": 9, "error_hints": False}})["execution"]
    {'max_rows': 9}
    >>> config_part({**cfg, "execution": {"max_rows": 9, "error_hints": True}})["execution"]
    {'max_rows': 9, 'error_hints': True}
    """
    models = config.get("models") or {}
    roles = []
    for r in config.get("roles") or []:
        r = {k: v for k, v in r.items() if k != "sampling"}
        if r.get("model") is not None:
            r["model"] = models.get(r["model"], r["model"])
        roles.append(r)
    out = {k: v for k, v in config.items() if k not in ("models", "name", "llm", "roles")}
    out["roles"] = roles
    for section, key, off in ADDED_SETTINGS:
        if isinstance(out.get(section), dict) and out[section].get(key, off) == off:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def sampling_part(config: Mapping[str, Any]) -> dict[str, Any]:
    """Role name -> its sampling settings (the ``sampling`` part).

    >>> sampling_part({"roles": [{"name": "j", "sampling": {"seed": 1}}, {"name": "r"}]})
    {'j': {'seed': 1}, 'r': None}
    """
    return {r["name"]: r.get("sampling") for r in config.get("roles") or []}


def question_rows(examples: Iterable[Any], given_sql: Mapping[str, str | None] | None = None) -> list[list[Any]]:
    """The ``questions`` part: per example in order ``[id, db_id, question, gold_sql, given SQL]``
    (the last None unless the stage gives the role a query, as the senior's does).

    >>> from types import SimpleNamespace as E
    >>> question_rows([E(id="dev-1", db_id="d", question="q?", gold_sql="SELECT 1")], {"dev-1": "SELECT 2"})
    [['dev-1', 'd', 'q?', 'SELECT 1', 'SELECT 2']]
    """
    given = given_sql or {}
    return [[str(e.id), str(e.db_id), str(e.question), str(e.gold_sql), given.get(str(e.id))] for e in examples]


def prompt_registry() -> dict[str, Any]:
    """Every prompt text the roles can be given: :data:`society.prompts.PROMPTS` (name -> system,
    user), :data:`society.prompts.PERSONA_PROMPTS` and the rationalization hint texts."""
    return {
        "templates": {k: [t.system, t.user] for k, t in prompts.PROMPTS.items()},
        "personas": dict(prompts.PERSONA_PROMPTS),
        "hint": [prompts.HINT_OPEN, prompts.HINT_CLOSE, prompts.JUNIOR_HINT],
    }


def used_models(society: Any, *, engine: str = "llama.cpp") -> list[str]:
    """The embedded models (sorted) the society's enabled roles use: the GGUF files the ``model`` part
    hashes.

    Args:
        society: a :class:`society.config.SocietyConfig`.
        engine: the serving engine; only ``llama.cpp`` serves the GGUF file that is hashed.

    Raises:
        NotReusable: a role's alias is a remote endpoint (its weights cannot be hashed), or the
            engine is not llama.cpp.
    """
    if engine != "llama.cpp":
        raise NotReusable(f"serving.engine {engine!r} serves a checkpoint other than the hashed GGUF file")
    used = {r.model for r in society.roles if r.enabled and r.model}
    out: list[str] = []
    for alias in sorted(used):
        spec = society.models[alias]
        if not spec.embedded:
            raise NotReusable(f"model alias {alias!r} is a remote endpoint ({spec.base_url}); its weights cannot be "
                              "hashed")
        if spec.embedded not in out:
            out.append(spec.embedded)
    return out


def model_part(society: Any, *, model_files: Mapping[str, str | os.PathLike[str]], engine: str = "llama.cpp",
               cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The ``model`` part: ``{"engine": engine, "files": {embedded model -> sha256 of its GGUF}}``
    for the models the society's enabled roles use (:func:`used_models`).

    Args:
        society: a :class:`society.config.SocietyConfig`.
        model_files: embedded model -> its GGUF file (``society.models.ensure_model``), for each of
            :func:`used_models`.
        engine: the serving engine; only ``llama.cpp`` serves the GGUF file that is hashed.
        cache: :func:`file_sha256`'s cache file.

    Raises:
        NotReusable: as :func:`used_models`.
        KeyError: ``model_files`` lacks a model the society uses.
    """
    return {"engine": engine, "files": {m: file_sha256(model_files[m], cache=cache)
                                        for m in used_models(society, engine=engine)}}


def schema_settings(society: Any) -> dict[str, Any]:
    """How the society shows a database's schema (``society.toolkit.schema_text``'s keyword arguments:
    ``compact``, ``sample_rows``, ``max_chars``): the schema texts :func:`society_parts` hashes are read
    with these."""
    s = society.schema_
    return {"compact": s.compact, "sample_rows": s.sample_rows, "max_chars": s.max_chars}


def worked_examples_part(society: Any, examples: Sequence[Any]) -> dict[str, Any]:
    """What the juniors with the ``examples`` tool are shown: role -> question id -> the worked
    examples' ``[question, sql, db_id]`` (:func:`tools.examples.shown_for` with the role's resolved
    ``examples_k`` and ``examples_split``, the rule :func:`society.toolkit.sql_examples` applies).
    Empty when no enabled role has the tool, so the ``prompts`` part of every other society is
    unchanged; with it, a different bank (another split file, databases present or missing,
    ``$SQLSOCIETY_DATA_DIR``) gives a different hash.

    Raises:
        tools.spider.DataError: the role's split cannot be read.
    """
    out: dict[str, Any] = {}
    for r in society.roles:
        if not r.enabled or "examples" not in r.tools or ROLE_TYPES[r.type].kind != "junior":
            continue
        opts = ROLE_TYPES[r.type].Options.model_validate(r.options)
        k, split = opts.examples_k, opts.examples_split
        out[r.name] = {str(e.id): [[x.question, x.sql, x.db_id] for x in
                                   shown_for(str(e.question), str(e.db_id), k=k, split=split)]
                       for e in examples}
    return out


def society_parts(society: Any, examples: Sequence[Any], *, schemas: Mapping[str, str],
                  given_sql: Mapping[str, str | None] | None = None, model: Mapping[str, Any]) -> dict[str, Any]:
    """The values of the five parts (before hashing) for ``society`` on ``examples``.

    Args:
        society: the :class:`society.config.SocietyConfig` the stage runs.
        examples: the stage's questions (``tools.spider.SpiderExample``), in order.
        schemas: database id -> its schema text as the society shows it (``society.toolkit.schema_text``
            with :func:`schema_settings`), for (at least) every database of ``examples``.
        given_sql: question id -> the SQL the role is given (senior stages).
        model: :func:`model_part`'s value.

    Raises:
        KeyError: ``schemas`` lacks a database of ``examples``.
    """
    dump = society.model_dump(mode="json", by_alias=True)
    shown = worked_examples_part(society, examples)
    return {
        "model": dict(model),
        "config": config_part(dump),
        "prompts": {"registry": prompt_registry(), "schemas": {str(e.db_id): schemas[str(e.db_id)] for e in examples},
                    **({"worked_examples": shown} if shown else {})},
        "sampling": sampling_part(dump),
        "questions": question_rows(examples, given_sql),
    }


# ----------------------------------------------------------------------------- fingerprints


@dataclass(frozen=True)
class Fingerprint:
    """What a stage's records depend on: its ``stage`` name, the ``agent`` evaluated (``society``,
    ``juniors``, ``senior``) and part name -> sha256 hex (:data:`PARTS`)."""

    stage: str
    agent: str
    parts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, stage: str, agent: str, values: Mapping[str, Any]) -> Fingerprint:
        """Hash each part's value (:func:`sha256_json`).

        Raises:
            ValueError: ``values`` lacks a part or has one not in :data:`PARTS`.

        >>> fp = Fingerprint.of("baseline", "society", {p: p for p in PARTS})
        >>> sorted(fp.parts) == sorted(PARTS) and fp.parts["model"] == sha256_json("model")
        True
        """
        if set(values) != set(PARTS):
            raise ValueError(f"a fingerprint has the parts {list(PARTS)}; got {sorted(values)}")
        return cls(stage, agent, {p: sha256_json(values[p]) for p in PARTS})

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "agent": self.agent, "parts": dict(self.parts)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fingerprint:
        """Read :meth:`to_json`'s form.

        Raises:
            ValueError: a field is missing or of the wrong kind.
        """
        try:
            return cls(str(data["stage"]), str(data["agent"]), {str(k): str(v) for k, v in data["parts"].items()})
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a stage fingerprint: {e!r}") from None


def differing_parts(want: Fingerprint, have: Fingerprint) -> list[str]:
    """The parts (in :data:`PARTS` order, then ``agent``) in which ``have`` differs from ``want``;
    a part missing on either side differs.

    >>> a = Fingerprint("baseline", "society", {p: "0" for p in PARTS})
    >>> differing_parts(a, a)
    []
    >>> differing_parts(a, Fingerprint("baseline", "society", {**a.parts, "sampling": "1", "model": "2"}))
    ['model', 'sampling']
    >>> differing_parts(a, Fingerprint("baseline", "juniors", a.parts))
    ['agent']
    """
    out = [p for p in PARTS if want.parts.get(p) is None or want.parts.get(p) != have.parts.get(p)]
    return out + (["agent"] if want.agent != have.agent else [])


def mismatch_message(stage: str, source: Path, want: Fingerprint, have: Fingerprint) -> str:
    """The refusal's text: the stage, the source, each differing part with both hashes (12 hex
    digits) and the fix.

    >>> a = Fingerprint("baseline", "society", {p: "a" * 64 for p in PARTS})
    >>> b = Fingerprint("baseline", "society", {**a.parts, "prompts": "b" * 64})
    >>> print(mismatch_message("baseline", Path("runs/old"), a, b))  # doctest: +NORMALIZE_WHITESPACE
    stage 'baseline' of runs/old was made with other settings: prompts hash differs (here aaaaaaaaaaaa, there
    bbbbbbbbbbbb); its records are not reused. Remove runs/old from reuse_from, or run with the settings it was
    made with
    """
    diffs = []
    for p in differing_parts(want, have):
        if p == "agent":
            diffs.append(f"agent differs (here {want.agent}, there {have.agent})")
        else:
            diffs.append(f"{p} hash differs (here {str(want.parts.get(p))[:12]}, there "
                         f"{str(have.parts.get(p))[:12]})")
    return (f"stage {stage!r} of {source} was made with other settings: {'; '.join(diffs)}; its records are not "
            f"reused. Remove {source} from reuse_from, or run with the settings it was made with")


# ----------------------------------------------------------------------------- files


def fingerprint_path(stage_file: Path) -> Path:
    """``<stage>.fingerprint.json`` beside a stage's ``<stage>.jsonl``.

    >>> fingerprint_path(Path("run/eval/baseline.jsonl")).as_posix()
    'run/eval/baseline.fingerprint.json'
    """
    return stage_file.with_suffix(".fingerprint.json")


def reused_path(stage_file: Path) -> Path:
    """``<stage>.reused.json`` beside a stage's ``<stage>.jsonl``: where a reused stage came from.

    >>> reused_path(Path("run/eval/roles/juniors_baseline.jsonl")).as_posix()
    'run/eval/roles/juniors_baseline.reused.json'
    """
    return stage_file.with_suffix(".reused.json")


def stage_file(run_dir: Path, stage: str, *, role_level: bool) -> Path:
    """Where a run keeps a stage's records: ``eval/<stage>.jsonl`` or, role-level,
    ``eval/roles/<stage>.jsonl`` (the layout of :class:`training.run_dir.RunDir`).

    >>> stage_file(Path("r"), "juniors_baseline", role_level=True).as_posix()
    'r/eval/roles/juniors_baseline.jsonl'
    """
    return (run_dir / "eval" / "roles" if role_level else run_dir / "eval") / f"{stage}.jsonl"


@dataclass(frozen=True)
class ReuseMatch:
    """A finished stage of an earlier run whose fingerprint matches: its ``run_dir``, records file
    ``records``, summary file ``summary`` and ``fingerprint``; ``questions``: None when the stage is
    taken whole, else the ids of this stage's questions taken from a source stage that holds more
    (:func:`holds_questions`), with this stage's own fingerprint ``want``."""

    run_dir: Path
    records: Path
    summary: Path
    fingerprint: Fingerprint
    questions: tuple[str, ...] | None = None
    want: Fingerprint | None = None


def stage_files(role_level: bool) -> Callable[[Path, str], tuple[Path, Path, Path]]:
    """Where a run keeps an evaluation stage: ``(records, summary, fingerprint)`` for a run
    directory and a stage name (:func:`stage_file`, ``.summary.json``, :func:`fingerprint_path`).

    >>> [p.as_posix() for p in stage_files(False)(Path("r"), "baseline")]
    ['r/eval/baseline.jsonl', 'r/eval/baseline.summary.json', 'r/eval/baseline.fingerprint.json']
    """
    def where(root: Path, stage: str) -> tuple[Path, Path, Path]:
        records = stage_file(root, stage, role_level=role_level)
        return records, records.with_suffix(".summary.json"), fingerprint_path(records)

    return where


def gather_files(root: Path, stage: str = "gather") -> tuple[Path, Path, Path]:
    """Where a run keeps its phase-1 rollouts: ``(store.sqlite, phases/1-gather/done.json,
    phases/1-gather/fingerprint.json)``.

    >>> [p.as_posix() for p in gather_files(Path("r"))]
    ['r/store.sqlite', 'r/phases/1-gather/done.json', 'r/phases/1-gather/fingerprint.json']
    """
    d = root / "phases" / "1-gather"
    return root / "store.sqlite", d / "done.json", d / "fingerprint.json"


def holds_questions(want_ids: Sequence[str], source_ids: Sequence[str]) -> bool:
    """Whether a source stage on ``source_ids`` holds every one of ``want_ids`` and more (a stage on
    the same questions matches whole or not at all).

    >>> holds_questions(["b"], ["a", "b", "c"]), holds_questions(["a", "b"], ["b", "a"]), holds_questions(["d"], ["a"])
    (True, False, False)
    """
    have = set(source_ids)
    return bool(want_ids) and set(want_ids) <= have and len(have) > len(set(want_ids))


def find_reusable(want: Fingerprint, sources: Sequence[str | os.PathLike[str]], *, role_level: bool = False,
                  where: Callable[[Path, str], tuple[Path, Path, Path]] | None = None,
                  want_ids: Sequence[str] | None = None,
                  rebuild: Callable[[list[str]], Fingerprint | None] | None = None) -> ReuseMatch | None:
    """The first source run that finished ``want.stage`` (its records, summary and fingerprint are
    there), when its fingerprint equals ``want``; or, given ``want_ids`` and ``rebuild``, when its
    records hold every question of ``want_ids`` among more (:func:`holds_questions`) and ``rebuild``
    of its question ids (in its records' order) equals its fingerprint: the match's ``questions``
    then name this stage's. None when no source has the stage.

    Args:
        want: this run's fingerprint of the stage.
        sources: earlier run directories, in the order to look.
        role_level: the stage is a role-level one (``eval/roles/``).
        where: run directory, stage -> ``(records, summary, fingerprint)`` paths (default
            :func:`stage_files`; :func:`gather_files` for phase 1's store).
        want_ids: this stage's question ids; None: only a whole match.
        rebuild: question ids -> this run's fingerprint of the stage on those questions (None when
            one of them is not in this run's split).

    Raises:
        ReuseRefused: the first source that finished the stage has no fingerprint (made before
            fingerprints were written) or differs in a part (the message names it,
            :func:`mismatch_message`; for a source that holds this stage's questions among more, the
            parts in which it differs from this run's settings on its questions); later sources are
            not tried, so what is reused never depends on which of two disagreeing runs comes first
            silently.
        FileNotFoundError: a source is not a directory.
    """
    where = where or stage_files(role_level)
    for src in sources:
        root = Path(src)
        if not root.is_dir():
            raise FileNotFoundError(f"reuse_from: {root} is not a run directory")
        records, summary, fp_file = where(root, want.stage)
        if not (records.is_file() and summary.is_file()):
            continue
        if not fp_file.is_file():
            raise ReuseRefused(
                f"stage {want.stage!r} of {root} has no fingerprint ({fp_file.name}: made before fingerprints were "
                f"written, or by a trained model), so it cannot be shown to match; remove {root} from reuse_from")
        try:
            have = Fingerprint.from_json(json.loads(fp_file.read_text()))
        except ValueError as e:
            raise ReuseRefused(f"{fp_file}: unreadable fingerprint ({e}); remove {root} from reuse_from") from None
        if not differing_parts(want, have):
            return ReuseMatch(root, records, summary, have)
        msg = mismatch_message(want.stage, root, want, have)
        if want_ids and rebuild and want.agent == have.agent:
            source_ids = [str(r.get("question_id")) for r in read_jsonl(records)]
            if holds_questions(want_ids, source_ids):
                alt = rebuild(source_ids)
                if alt is not None and not differing_parts(alt, have):
                    return ReuseMatch(root, records, summary, have, questions=tuple(str(q) for q in want_ids),
                                      want=want)
                if alt is not None:
                    msg = mismatch_message(want.stage, root, alt, have).replace(
                        "; its records are not reused", f" (compared on its {len(source_ids)} questions, which hold "
                        f"this stage's {len(want_ids)}); its records are not reused", 1)
            elif differing_parts(want, have) == ["questions"]:
                msg = msg.replace("; its records are not reused", f" (its {len(set(source_ids))} questions do not "
                                  f"hold all of this stage's {len(want_ids)}); its records are not reused", 1)
        raise ReuseRefused(msg)
    return None


def copy_stage(match: ReuseMatch, dest: Path) -> dict[str, Any]:
    """Copy a matching stage into this run: records to ``dest`` (``<stage>.jsonl``), its summary
    (with ``reused_from`` added), its fingerprint, and ``<stage>.reused.json`` saying where from.

    Returns:
        The stage summary as written (``reused_from`` = the source run directory).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".copy.tmp")
    shutil.copyfile(match.records, tmp)
    os.replace(tmp, dest)
    summary = json.loads(match.summary.read_text())
    summary["reused_from"] = str(match.run_dir)
    atomic_write_text(fingerprint_path(dest), json.dumps(match.fingerprint.to_json(), indent=2) + "\n")
    atomic_write_text(reused_path(dest), json.dumps({
        "stage": match.fingerprint.stage, "source_run": str(match.run_dir), "source_file": str(match.records),
        "n": summary.get("n"), "source_seconds": summary.get("seconds"), "parts": match.fingerprint.parts,
        **({"source_cached_calls": summary["cached_calls"]} if summary.get("cached_calls") else {}),
    }, indent=2) + "\n")
    atomic_write_text(dest.with_suffix(".summary.json"), json.dumps(summary, indent=2, default=str))
    return summary


def copy_questions(match: ReuseMatch, dest: Path, partial: Path) -> dict[str, Any]:
    """Take the records of ``match.questions`` (a source stage that holds more questions than this
    one, :func:`find_reusable`) into this run as finished questions of an interrupted attempt:
    written to ``partial`` (the stage's ``<stage>.partial.jsonl``, with ``stage_seconds`` 0, since
    they cost nothing here), so the stage's own resume path sums them up with nothing left to run;
    ``<stage>.reused.json`` beside ``dest`` says where from.

    Returns:
        ``reused.json``'s content: ``stage``, ``source_run``, ``source_file``, ``n`` (questions taken),
        ``source_n`` (the source stage's questions), ``source_question_seconds`` (the sum of the taken
        records' ``seconds``: question time, not wall time when the source ran questions
        concurrently), ``parts`` (this stage's hashes) and ``source_questions`` (the source's
        ``questions`` hash).

    Raises:
        ValueError: ``match`` is a whole-stage match (use :func:`copy_stage`).
    """
    if match.questions is None or match.want is None:
        raise ValueError("copy_questions takes a match on part of a source stage's questions; use copy_stage")
    by_id = {str(r.get("question_id")): r for r in read_jsonl(match.records)}
    taken = [{**by_id[q], "stage": match.want.stage, "stage_seconds": 0.0} for q in match.questions]
    partial.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(partial, "".join(json.dumps(r, default=str) + "\n" for r in taken))
    info = {"stage": match.want.stage, "source_run": str(match.run_dir), "source_file": str(match.records),
            "n": len(taken), "source_n": len(by_id),
            "source_question_seconds": sum(float(r.get("seconds") or 0) for r in taken),
            "parts": match.want.parts, "source_questions": match.fingerprint.parts.get("questions")}
    atomic_write_text(reused_path(dest), json.dumps(info, indent=2) + "\n")
    return info


def copy_store(match: ReuseMatch, run_dir: Path) -> dict[str, Any]:
    """Copy a matching phase-1 store into ``run_dir`` (phase 1 then skips every task it holds):
    ``store.sqlite`` through SQLite's online backup (a consistent copy, WAL included), the source's
    phase-1 rows of ``metrics.jsonl`` (phases ``1-gather*``, for the report's learning curves)
    appended to this run's, the fingerprint, and ``phases/1-gather/reused.json`` saying where from.

    Returns:
        ``reused.json``'s content: ``stage``, ``source_run``, ``source_file``, ``n`` (succeeded
        rollouts stored there), ``unit`` (``rollouts``), ``metrics_rows``, ``source_seconds`` (the
        source's phase-1 time), ``parts``.

    Raises:
        FileExistsError: ``run_dir`` already has a store (a reused store never joins other rollouts).
        sqlite3.Error: the source store cannot be read.
    """
    dest = run_dir / "store.sqlite"
    if dest.exists():
        raise FileExistsError(f"{dest} exists: a store is reused only into a run that has none")
    tmp = run_dir / "store.sqlite.copy.tmp"
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{match.records}?mode=ro", uri=True)
    try:
        out = sqlite3.connect(tmp)
        try:
            src.backup(out)
        finally:
            out.close()
    finally:
        src.close()
    os.replace(tmp, dest)
    src_metrics = match.run_dir / "metrics.jsonl"
    rows = [row for row in (read_jsonl(src_metrics, skip_bad=True) if src_metrics.is_file() else [])
            if str(row.get("phase", "")).startswith("1-gather")]
    if rows:
        with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:  # as training.hooks writes them
            f.write("".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))
    d = run_dir / "phases" / "1-gather"
    d.mkdir(parents=True, exist_ok=True)
    done = json.loads(match.summary.read_text())
    info = {"stage": match.fingerprint.stage, "source_run": str(match.run_dir), "source_file": str(match.records),
            "n": done.get("stored_succeeded"), "unit": "rollouts", "metrics_rows": len(rows),
            "source_seconds": done.get("seconds"), "parts": match.fingerprint.parts}
    atomic_write_text(d / "fingerprint.json", json.dumps(match.fingerprint.to_json(), indent=2) + "\n")
    atomic_write_text(d / "reused.json", json.dumps(info, indent=2) + "\n")
    return info
