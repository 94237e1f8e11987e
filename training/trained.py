"""A trained society outside ``sqlsociety train``: load a run's (or an export's) trained parts, export them.

A training run directory (``sqlsociety train``) holds the juniors' LoRA adapters (phase 2: one
shared, or one per persona), the senior's GRPO adapter (phase 3) and the supervisor's fitted
bandit policy (phase 4). :func:`load_trained` binds them to the roles exactly as the pipeline's
last evaluation stage does -- it routes that run's society by its finished phases as the pipeline
does (:func:`training.role_aliases.route_society`: the role split aliases and the
bandit supervisor) and its trained adapters (``trained_adapters``: model alias -> PEFT adapter),
so there is one binding rule -- and says which roles stay untrained (a phase that did not finish,
a persona with no SFT row, a senior trained with VERL). Served like the pipeline's llama.cpp
stages: one llama-server per base model, each adapter chosen per request by its alias
(:func:`society.serving.serve_config` with ``adapters``).

:func:`export_trained` writes the same binding as a self-contained folder (``sqlsociety export``)::

    OUT/
      sqlsociety-export.json   manifest: base model id + sha256, adapters, policy, role bindings, dates
      society.yaml             the society config, every role on its bound alias; the supervisor's
                               ``options.path`` is ``policy.joblib`` (relative to OUT)
      adapters/<alias>.gguf    llama.cpp GGUF LoRA adapters (training.export.export_lora_gguf)
      policy.joblib            the bandit policy (when phase 4 finished)
      train_profile.yaml       the run's training profile (config.yaml)
      card.md                  what was trained, how, and the run's per-role table (report.md)

No base model is copied: the manifest names it by id and sha256, and :meth:`TrainedSociety.check_base`
refuses to serve an adapter on a model file with another hash (:class:`BaseModelMismatch`).
:func:`load_trained` reads such a folder as well as a run directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from society.config import ConfigError, SocietyConfig
from society.models import EMBEDDED_MODELS
from society.roles import ROLE_TYPES
from society.settings import ModelSpec
from tools.files import atomic_write_text
from training.checkpoints import resolve_gguf
from training.profile import TrainConfig, TrainConfigError
from training.reuse import file_sha256
from training.role_aliases import route_society, trained_adapters
from training.run_dir import PHASES, RunDir

__all__ = [
    "EXPORT_MANIFEST",
    "BaseModelMismatch",
    "NotATrainedRun",
    "RoleBinding",
    "TrainedRunError",
    "TrainedSociety",
    "export_trained",
    "load_trained",
    "report_role_table",
]

#: The manifest file that marks an exported folder (``sqlsociety export``).
EXPORT_MANIFEST = "sqlsociety-export.json"
#: Version of the export layout; a folder of another version is refused.
EXPORT_FORMAT = 1

_WHAT_TO_PASS = ("pass a training run directory (`sqlsociety train` writes config.yaml and phases/ there) or a "
                 f"folder written by `sqlsociety export` ({EXPORT_MANIFEST} there)")


class TrainedRunError(ValueError):
    """A run directory or export that cannot be loaded or exported (the message names it and the fix)."""


class NotATrainedRun(TrainedRunError):
    """The path is neither a training run directory nor an export folder."""


class BaseModelMismatch(TrainedRunError):
    """An adapter would be served on a base model file other than the one it was trained on."""


@dataclass(frozen=True)
class RoleBinding:
    """What one role of a trained society is bound to.

    Attributes:
        role: the role's name in the society config (``junior_direct``, ``supervisor``, ...).
        kind: ``junior`` | ``supervisor`` | ``senior`` | ``reviewer``.
        alias: the model alias the role calls (None for a role without a model).
        trained: what it is bound to, e.g. ``"LoRA junior_policy (phase 2 SFT, shared)"`` or
            ``"bandit policy (phase 4)"``; None when the role stays untrained.
        why_untrained: why not (``"no phase 3 (grpo) output in RUN"``, ...); None when trained.
    """

    role: str
    kind: str
    alias: str | None
    trained: str | None
    why_untrained: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The binding as a JSON-able dict (the export's manifest)."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class TrainedSociety:
    """A society with its trained parts bound, from a run directory or an export folder.

    Attributes:
        source: the run directory or export folder (as given).
        kind: ``"run"`` or ``"export"``.
        society: the :class:`society.config.SocietyConfig` with every role on its bound alias and the
            supervisor on the bandit policy when phase 4 finished.
        adapters: model alias -> LoRA adapter: a PEFT directory (a run) or a GGUF file (an export).
        base_model: the embedded model alias (or GGUF path) the adapters were trained on.
        base_sha256: sha256 (hex) of the base GGUF recorded in an export; None for a run (hashed
            from the file when needed, :meth:`base_hash`).
        profile: the training profile's name.
        roles: one :class:`RoleBinding` per role of ``society``, in config order.
        trained_at: ISO date-time (UTC) the last finished phase wrote its ``done.json``, or None.
        manifest: an export's manifest (empty for a run).
    """

    source: Path
    kind: Literal["run", "export"]
    society: SocietyConfig
    adapters: dict[str, Path]
    base_model: str
    base_sha256: str | None
    profile: str
    roles: list[RoleBinding]
    trained_at: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def untrained(self) -> list[RoleBinding]:
        """The roles that stay untrained (``trained`` is None)."""
        return [r for r in self.roles if r.trained is None]

    def notes(self) -> list[str]:
        """One line per role: what it is bound to, or that it stays untrained and why (CLI output)."""
        out = []
        for r in self.roles:
            if r.trained:
                out.append(f"{r.role}: {r.trained}")
            else:
                out.append(f"{r.role}: untrained ({r.why_untrained})")
        return out

    def base_hash(self) -> str:
        """sha256 (hex) of the base model file: the export's recorded hash, else hashed from the file
        (:func:`training.reuse.file_sha256`, cached by path, size and mtime).

        Raises:
            TrainedRunError: the base model cannot be found (unknown alias, missing file).
        """
        if self.base_sha256:
            return self.base_sha256
        return _model_sha256(self.base_model, f"{self.source}: base_model")

    def check_base(self, society: SocietyConfig | None = None) -> None:
        """Refuse to serve an adapter on another base model: every alias of ``society`` (default
        :attr:`society`) that carries an adapter must be served the embedded model whose GGUF has
        the base model's sha256.

        Raises:
            BaseModelMismatch: an adapter alias is served another model file, or is not an embedded
                model at all (the message names the alias, both models and both hashes).
        """
        society = society if society is not None else self.society
        want = self.base_hash()
        for alias in sorted(self.adapters):
            spec = society.models.get(alias)
            if spec is None:
                continue
            if not spec.embedded:
                raise BaseModelMismatch(
                    f"{self.source}: model alias {alias!r} carries a LoRA adapter trained on {self.base_model} "
                    f"(sha256 {want[:12]}...) but points at a remote endpoint ({spec.base_url}); serve it the "
                    f"embedded model {self.base_model}")
            got = _model_sha256(spec.embedded, f"models.{alias}.embedded")
            if got != want:
                raise BaseModelMismatch(
                    f"{self.source}: the LoRA adapter of model alias {alias!r} was trained on {self.base_model} "
                    f"(sha256 {want[:12]}...), but {alias!r} would be served {spec.embedded} (sha256 {got[:12]}...); "
                    f"an adapter only fits its own base model: drop --model-alias, or serve {alias!r} "
                    f"`embedded: {self.base_model}`")

    def gguf_adapters(self) -> dict[str, Path]:
        """Model alias -> GGUF LoRA file, as llama-server loads them: an export's files; a run's
        ``adapter.gguf`` beside each PEFT adapter (exported by :func:`training.export.adapter_gguf`
        when missing or older than the safetensors, as the pipeline's serving does).

        Raises:
            TrainedRunError: an adapter cannot be converted (the message names it).
        """
        if self.kind == "export":
            return dict(self.adapters)
        from training.checkpoints import ExportError
        from training.export import adapter_gguf

        out = {}
        for alias, adapter in self.adapters.items():
            try:
                out[alias] = adapter_gguf(adapter, self.base_model)
            except (ExportError, FileNotFoundError, ValueError) as e:
                raise TrainedRunError(f"{self.source}: the adapter of {alias!r} ({adapter}) has no llama.cpp form: "
                                      f"{e}") from e
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-able facts for an evaluation's ``meta.json``: source, kind, profile, base model,
        adapters (alias -> path), policy and the role bindings."""
        return {"source": str(self.source), "kind": self.kind, "profile": self.profile,
                "base_model": self.base_model, "adapters": {a: str(p) for a, p in sorted(self.adapters.items())},
                "policy": _policy_path(self.society), "roles": [r.to_json() for r in self.roles]}


# ----------------------------------------------------------------------------- loading


def load_trained(path: str | Path) -> TrainedSociety:
    """Load a training run directory or an export folder as a :class:`TrainedSociety`.

    A run binds what its finished phases left (a run stopped after phase 2 gives trained juniors and
    an untrained senior and supervisor, each said in :attr:`TrainedSociety.roles`). Nothing is
    written: adapters are converted to GGUF only when served (:meth:`TrainedSociety.gguf_adapters`).

    Raises:
        NotATrainedRun: ``path`` does not exist, or is neither kind (the message names it and says
            what to pass).
        TrainedRunError: an unreadable profile, manifest or society config, or a phase output that a
            ``done.json`` names and that is missing.
    """
    root = Path(path)
    if not root.exists():
        raise NotATrainedRun(f"--run {root} does not exist; {_WHAT_TO_PASS}")
    if not root.is_dir():
        raise NotATrainedRun(f"--run {root} is a file, not a directory; {_WHAT_TO_PASS}")
    if (root / EXPORT_MANIFEST).is_file():
        return _load_export(root)
    if (root / "config.yaml").is_file() and (root / "phases").is_dir():
        return _load_run(root)
    if (root / "meta.json").is_file() and (root / "traces").is_dir():
        raise NotATrainedRun(f"--run {root} is the record of an `ask`/`eval` run (meta.json, traces/), not a "
                             f"trained society; {_WHAT_TO_PASS}")
    raise NotATrainedRun(f"--run {root} is not a trained society (no config.yaml + phases/, no {EXPORT_MANIFEST}); "
                         f"{_WHAT_TO_PASS}")


def _load_run(root: Path) -> TrainedSociety:
    """A training run directory: the pipeline's own binding (see the module docstring)."""
    try:
        cfg = TrainConfig.load(root / "config.yaml", check_sections=False)
        done = {k: RunDir(root, create=False).done(k) for k in PHASES}
        society = route_society(SocietyConfig.load(cfg.society_path()), done, cfg.junior_adapters)
        recorded = trained_adapters(done)  # the pipeline's alias -> adapter rule, not a copy of it
    except (TrainConfigError, ConfigError) as e:
        raise TrainedRunError(f"--run {root}: {e}") from e
    adapters = {alias: _in_run(root, p) for alias, p in recorded.items()}
    policy = _policy_path(society)
    if policy is not None:
        society = _with_policy(society, _in_run(root, Path(policy)))
    society = _adapters_on_base(society, adapters, cfg.base_model, root)
    roles = _run_bindings(society, adapters, done, root)
    stamps = [(root / "phases" / f"{k}-{PHASES[k]}" / "done.json").stat().st_mtime for k in PHASES if done[k]]
    trained_at = _iso(max(stamps)) if stamps else None
    return TrainedSociety(source=root, kind="run", society=society, adapters=adapters, base_model=cfg.base_model,
                          base_sha256=None, profile=cfg.name, roles=roles, trained_at=trained_at)


def _in_run(root: Path, recorded: Path) -> Path:
    """A phase output a ``done.json`` names: the path as recorded (absolute, or relative to the
    directory training ran from), else the same ``phases/...`` tail under ``root`` (a moved run).

    Raises:
        TrainedRunError: neither exists.
    """
    if recorded.exists():
        return recorded
    parts = recorded.parts
    if "phases" in parts:
        moved = root.joinpath(*parts[len(parts) - 1 - parts[::-1].index("phases"):])
        if moved.exists():
            return moved
    raise TrainedRunError(f"--run {root}: {recorded}, named by a phase's done.json, is missing; the run directory is "
                          "incomplete (resume it with `sqlsociety train --resume`)")


def _policy_path(society: SocietyConfig) -> str | None:
    """The bandit policy file of the society's enabled supervisor, or None."""
    for r in society.roles:
        if r.enabled and ROLE_TYPES[r.type].kind == "supervisor" and r.policy == "bandit":
            return str(r.options.get("path")) if r.options.get("path") else None
    return None


def _with_policy(society: SocietyConfig, path: Path | str) -> SocietyConfig:
    """A copy whose bandit supervisor reads its policy from ``path``."""
    roles = [r.model_copy(update={"options": {**r.options, "path": str(path)}})
             if ROLE_TYPES[r.type].kind == "supervisor" and r.policy == "bandit" else r for r in society.roles]
    return society.model_copy(update={"roles": roles})


def _adapters_on_base(society: SocietyConfig, adapters: dict[str, Path], base_model: str, root: Path) -> SocietyConfig:
    """Serve each adapter alias on ``base_model``, as the pipeline does (an adapter whose role's
    embedded model is another file gets a server of ``base_model``): the alias's model becomes
    ``embedded: base_model``.

    Raises:
        TrainedRunError: the base model is a GGUF path (or a Hugging Face directory) that is not an
            embedded model, so a society config cannot name it.
    """
    models = dict(society.models)
    for alias in adapters:
        spec = models.get(alias)
        if spec is None or spec.embedded == base_model:
            continue
        if base_model not in EMBEDDED_MODELS:
            if spec.embedded and _same_file(spec.embedded, base_model):
                continue
            raise TrainedRunError(
                f"--run {root}: the adapters were trained on base_model {base_model}, which is not an embedded model "
                f"({', '.join(sorted(EMBEDDED_MODELS))}); --run serves embedded models on llama.cpp only")
        models[alias] = ModelSpec(embedded=base_model)
    return society.model_copy(update={"models": models})


def _same_file(a: str, b: str) -> bool:
    try:
        return resolve_gguf(a) == resolve_gguf(b)
    except (FileNotFoundError, ValueError):
        return False


def _run_bindings(society: SocietyConfig, adapters: dict[str, Path], done: dict[int, Any],
                  root: Path) -> list[RoleBinding]:
    """One :class:`RoleBinding` per role of a run's bound society (see :func:`load_trained`)."""
    sft, grpo = done[2] or {}, done[3] or {}
    mode = str(sft.get("junior_adapters") or "shared")
    out = []
    for r in society.roles:
        kind = ROLE_TYPES[r.type].kind
        trained = why = None
        if kind == "junior":
            if r.model in adapters:
                trained = f"LoRA {r.model} (phase 2 SFT, {mode})"
            elif not done[2]:
                why = f"no phase 2 (sft) output in {root}"
            else:
                persona = str(r.persona or r.name)
                why = f"phase 2 trained no adapter for persona {persona!r} (no admitted conversation): base model"
        elif kind == "senior":
            if r.model in adapters:
                trained = f"LoRA {r.model} (phase 3 GRPO)"
            elif not done[3]:
                why = f"no phase 3 (grpo) output in {root}"
            elif grpo.get("model"):
                why = f"phase 3 trained full weights with VERL ({grpo['model']}), served by vLLM only: base model"
            else:
                why = "phase 3 wrote no adapter: base model"
        elif kind == "supervisor":
            if r.policy == "bandit" and done[4]:
                trained = "bandit policy (phase 4)"
            else:
                why = f"no phase 4 (bandit) output in {root}: policy {r.policy or 'majority_vote'}"
        else:
            why = "no phase trains this role"
        out.append(RoleBinding(role=r.name, kind=kind, alias=r.model, trained=trained, why_untrained=why))
    return out


def _load_export(root: Path) -> TrainedSociety:
    """An export folder (:func:`export_trained`).

    Raises:
        TrainedRunError: unreadable manifest, another format, or a file it names is missing.
    """
    mpath = root / EXPORT_MANIFEST
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrainedRunError(f"--run {root}: {mpath.name} is not readable JSON ({e}); export the run again") from e
    if not isinstance(m, dict) or m.get("format") != EXPORT_FORMAT:
        got = m.get("format") if isinstance(m, dict) else m
        raise TrainedRunError(f"--run {root}: {mpath.name} has format {got!r}, this version reads format "
                              f"{EXPORT_FORMAT}; export the run again")
    try:
        society = SocietyConfig.load(root / "society.yaml")
    except ConfigError as e:
        raise TrainedRunError(f"--run {root}: {e}") from e
    adapters = {}
    for alias, info in (m.get("adapters") or {}).items():
        f = root / info["file"]
        if not f.is_file():
            raise TrainedRunError(f"--run {root}: adapter file {info['file']} of {alias!r} is missing; export again")
        adapters[alias] = f
    policy = _policy_path(society)
    if policy is not None:
        p = Path(policy)
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            raise TrainedRunError(f"--run {root}: the bandit policy {policy} is missing; export again")
        society = _with_policy(society, p)
    base = m.get("base_model") or {}
    roles = [RoleBinding(**r) for r in m.get("roles") or []]
    return TrainedSociety(source=root, kind="export", society=society, adapters=adapters, base_model=str(base["id"]),
                          base_sha256=str(base["sha256"]), profile=str(m.get("profile") or ""), roles=roles,
                          trained_at=m.get("trained_at"), manifest=m)


# ----------------------------------------------------------------------------- export


def export_trained(source: str | Path, out: str | Path, *, now: datetime | None = None,
                   dtype: Literal["f16", "f32"] = "f16") -> Path:
    """Write the trained society of ``source`` (a run directory or an export) to the folder ``out``
    (layout in the module docstring): GGUF adapters, the bandit policy, the bound society config, the
    manifest and ``card.md``. The base model is named (id + sha256), not copied; each adapter of a
    0.5B model at rank 8 is 8.8 MB in F16.

    Args:
        source: a training run directory or an export folder (:func:`load_trained`).
        out: a folder that does not exist yet (or is empty).
        now: the export's timestamp (default: the current UTC time).
        dtype: the adapters' tensors: ``f16`` (half the size; converted from a run's PEFT adapters by
            :func:`training.export.export_lora_gguf`) or ``f32`` (the GGUF files the run served,
            copied byte for byte). An export's adapters are copied as they are either way. The
            manifest records each adapter's ``dtype``.

    Returns:
        ``out``.

    Raises:
        NotATrainedRun / TrainedRunError: see :func:`load_trained`; an adapter with no GGUF form.
        FileExistsError: ``out`` exists and is not an empty directory.
    """
    t = load_trained(source)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"export folder {out} exists and is not empty; pass a new folder")
    if dtype not in ("f16", "f32"):
        raise ValueError(f"dtype must be 'f16' or 'f32', got {dtype!r}")
    base_sha = t.base_hash()
    ggufs = t.gguf_adapters()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "adapters").mkdir(parents=True)
    adapters: dict[str, dict[str, Any]] = {}
    for alias, g in sorted(ggufs.items()):
        rel = f"adapters/{alias}.gguf"
        peft = Path(t.adapters[alias])
        if t.kind == "run" and dtype == "f16" and peft.is_dir():
            from training.export import export_lora_gguf

            export_lora_gguf(peft, t.base_model, tmp / rel, dtype="f16")
            kind = "f16"
        else:
            shutil.copyfile(g, tmp / rel)
            kind = ((t.manifest.get("adapters") or {}).get(alias) or {}).get("dtype", "f32")
        adapters[alias] = {"file": rel, "sha256": _sha256(tmp / rel), "dtype": kind,
                           "roles": [r.role for r in t.roles if r.alias == alias]}
    society = t.society
    policy = _policy_path(society)
    if policy is not None:
        shutil.copyfile(policy, tmp / "policy.joblib")
        society = _with_policy(society, "policy.joblib")
    header = ["# The society of a trained run, every role bound (sqlsociety export).",
              f"# Run it with: sqlsociety eval --run {out.name}   (serves adapters/ and policy.joblib)",
              *[f"#   {line}" for line in t.notes()]]
    (tmp / "society.yaml").write_text("\n".join(header) + "\n" + society.to_yaml(), encoding="utf-8")
    profile_src = t.source / ("config.yaml" if t.kind == "run" else "train_profile.yaml")
    if profile_src.is_file():
        shutil.copyfile(profile_src, tmp / "train_profile.yaml")
    stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    base_file = resolve_gguf(t.base_model) if t.kind == "run" else None
    manifest = {
        "format": EXPORT_FORMAT,
        "profile": t.profile,
        "base_model": {"id": t.base_model, "sha256": base_sha,
                       "file": base_file.name if base_file else (t.manifest.get("base_model") or {}).get("file"),
                       "size": base_file.stat().st_size if base_file else (t.manifest.get("base_model") or {}).get(
                           "size")},
        "adapters": adapters,
        "policy": {"file": "policy.joblib"} if policy is not None else None,
        "roles": [r.to_json() for r in t.roles],
        "source_run": str(t.source.resolve()) if t.kind == "run" else t.manifest.get("source_run"),
        "trained_at": t.trained_at,
        "exported_at": stamp,
    }
    atomic_write_text(tmp / EXPORT_MANIFEST, json.dumps(manifest, indent=2) + "\n")
    report = t.source / ("report.md" if t.kind == "run" else "card.md")
    table = report_role_table(report.read_text(encoding="utf-8")) if report.is_file() else None
    (tmp / "card.md").write_text(render_card(manifest, t.roles, table, out.name), encoding="utf-8")
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


#: The heading of the per-role table in a run's ``report.md`` (``evaluation.report.render_markdown``).
ROLE_TABLE_HEADING = "## Per-role breakdown"


def report_role_table(markdown: str) -> str | None:
    """The per-role section of a run's ``report.md`` (its heading, table and note, up to the next
    ``## `` heading), or None when the report has none.

    >>> md = "# r\\n\\n## Per-role breakdown\\n\\n| role |\\n|---|\\n| junior |\\n\\nnote\\n\\n## Next\\n"
    >>> report_role_table(md)
    '## Per-role breakdown\\n\\n| role |\\n|---|\\n| junior |\\n\\nnote'
    >>> report_role_table("# r\\n") is None
    True
    """
    lines = markdown.splitlines()
    if ROLE_TABLE_HEADING not in lines:
        return None
    start = lines.index(ROLE_TABLE_HEADING)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end]).strip()


def render_card(manifest: dict[str, Any], roles: list[RoleBinding], role_table: str | None, name: str) -> str:
    """The export's ``card.md``: how the run was made (profile, base model id and sha256, dates),
    what each role is bound to, the run's per-role table (``role_table``, from its ``report.md``) and
    how to run it.

    >>> card = render_card({"profile": "smoke", "base_model": {"id": "m", "sha256": "ab" * 32},
    ...                     "trained_at": "2026-12-05T14:00:00+00:00", "exported_at": "2026-12-05T15:00:00+00:00",
    ...                     "source_run": "/r", "adapters": {}, "policy": None},
    ...                    [RoleBinding("senior", "senior", "senior_policy", None, "no phase 3")], None, "out")
    >>> "| senior | senior | senior_policy | untrained: no phase 3 |" in card and "profile `smoke`" in card
    True
    """
    base = manifest["base_model"]
    out = [f"# Trained SQL Society: `{name}`", "",
           "## How it was made", "",
           f"- training profile `{manifest.get('profile')}` (train_profile.yaml), run `{manifest.get('source_run')}`",
           f"- base model `{base['id']}` ({base.get('file') or 'file name not recorded'}), sha256 `{base['sha256']}`;"
           " not included: the adapters are served on it and refused on any other file",
           f"- trained (last phase finished): {manifest.get('trained_at') or 'unknown'}; exported: "
           f"{manifest.get('exported_at')}", "",
           "## Roles", "",
           "| role | kind | model alias | bound to |", "|---|---|---|---|"]
    for r in roles:
        bound = r.trained or f"untrained: {r.why_untrained}"
        out.append(f"| {r.role} | {r.kind} | {r.alias or '–'} | {bound} |")
    files = ", ".join("`" + v["file"] + "`" + (f" ({str(v['dtype']).upper()})" if v.get("dtype") else "")
                      for v in manifest["adapters"].values()) or "none"
    policy = "`policy.joblib`" if manifest.get("policy") else "none"
    out += ["", f"Adapters: {files}; bandit policy: {policy}."]
    if any(v.get("dtype") == "f16" for v in manifest["adapters"].values()):
        out += ["The run served its adapters in F32; F16 halves their size and rounds each LoRA weight to 11 "
                "significant bits, which can change a token where two were nearly tied (judge the export with "
                "`sqlsociety eval --run`, not the run's figures)."]
    out += [""]
    if role_table:
        out += ["The run's per-role results, from its report.md:", "", role_table, ""]
    else:
        out += ["The run has no report.md: no per-role results to show.", ""]
    out += ["## Run it", "", "```", f"sqlsociety roles --run {name}",
            f"sqlsociety ask --run {name} --db concert_singer \"How many singers are there?\"",
            f"sqlsociety eval --run {name} --split dev --limit 20", "```", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- helpers


def _model_sha256(model: str, what: str) -> str:
    """sha256 of the GGUF an embedded alias or path names.

    Raises:
        TrainedRunError: the model cannot be found (the message names ``what``).
    """
    try:
        return file_sha256(resolve_gguf(model))
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise TrainedRunError(f"{what} {model!r}: {e}") from e


def _sha256(path: Path) -> str:
    """sha256 (hex) of a small file's bytes (an adapter: a few MB)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
