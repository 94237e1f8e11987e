"""``sqlsociety train --dry-run``: validate a whole training profile and print what a run would do.

Nothing is started, trained, converted or downloaded. :func:`plan_profile` checks

* every section typed: the profile (:class:`training.profile.TrainConfig`: ``sft`` / ``grpo`` /
  ``bandit`` / ``reward`` / ``adapter`` are the classes they configure; an unknown or bad key is an
  error naming it, :attr:`~training.profile.TrainConfig.section_problems`) and the society config it names;
* every model resolvable: ``base_model`` (embedded alias, ``.gguf`` file, or -- with
  ``serving.engine: vllm`` -- a Hugging Face directory; a hub id is refused with the command that
  downloads it, since nothing here contacts the hub), each embedded alias
  of the society, each ``base_url`` endpoint (URL form and host name resolution; the endpoint is
  not called) and its ``api_key_env``;
* every file: the society config, the data directory and the gather/eval split files (their
  usable question counts), the VERL YAML when VERL may run, the llama-server binary when
  llama.cpp serves;
* the GPU stack when the profile needs it: CUDA (``torch.cuda.is_available()``), ``vllm`` for
  ``serving.engine: vllm`` or VERL, ``verl`` for ``grpo.backend: verl``, ``unsloth`` for
  ``sft.backend: unsloth`` (``auto`` backends only note their fallback). Packages are looked up
  with ``importlib.util.find_spec``, not imported.

and returns a :class:`TrainPlan`: phases in order, roles -> model alias -> server and adapter per
phase, servers, budgets. ``TrainPlan.render()`` is the text the CLI prints.

Exit status of ``sqlsociety train --dry-run``: 2 when the profile has an error (a bad key, an
unresolvable model, a missing file), else 0 -- also when the GPU stack the profile needs is missing
on this machine: the plan is printed with a ``NOT RUNNABLE HERE`` block that names what to install
(``SQLSOCIETY_GPU=1 bash scripts/install.sh`` on a CUDA machine). A run without ``--dry-run``
refuses to start (exit 2) in that case, before anything is written.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from evaluation.role_effects import NOISE_STAGE, SHARED_STAGE
from society.config import ConfigError, SocietyConfig
from society.llama_server import ServerNotInstalledError, find_llama_server
from society.models import EMBEDDED_MODELS
from tools.spider import DataError, load_examples
from training.gather_config import GatherConfig
from training.gpu_stack import INSTALL_GPU, gpu_stack_needs
from training.grpo_verl import load_verl_config
from training.profile import TrainConfig
from training.role_aliases import (
    JUNIOR_ALIAS,
    NOISE_SEED_OFFSET,
    SENIOR_ALIAS,
    junior_personas,
    role_kind,
    role_split_config,
)
from training.run_dir import PHASES, STAGE_AFTER_PHASE

__all__ = ["Finding", "TrainPlan", "plan_profile", "HUB_ID"]

#: A Hugging Face hub id: ``owner/name``.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: How a ``base_model`` that is a path (not a hub id) starts.
PATH_PREFIXES = ("./", "../", "/", "~")


def hub_guess(dir_name: str) -> str:
    """The hub id a model directory's name most likely came from (``Qwen/<name>`` for Qwen models,
    else ``OWNER/<name>``), for the download command the plan prints.

    >>> hub_guess("Qwen2.5-Coder-1.5B-Instruct")
    'Qwen/Qwen2.5-Coder-1.5B-Instruct'
    >>> hub_guess("my-model")
    'OWNER/my-model'
    """
    return f"{'Qwen' if dir_name.lower().startswith('qwen') else 'OWNER'}/{dir_name}"


def base_is_hf_directory(cfg: TrainConfig) -> bool:
    """``serving.engine: vllm`` with a Hugging Face directory as ``base_model`` (present, or a path
    that is absent here): then vLLM serves that model for every embedded alias of the society --
    the society's embedded names say what runs on the CPU (``training.pipeline``)."""
    bm = cfg.base_model
    if cfg.serving.engine != "vllm" or bm in EMBEDDED_MODELS or bm.endswith(".gguf"):
        return False
    p = Path(bm).expanduser()
    return (p / "config.json").is_file() or (not p.exists() and bm.startswith(PATH_PREFIXES))


ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Finding:
    """One result of validation: ``level`` ``"error"`` (the profile is wrong), ``"missing"`` (the
    machine lacks what the profile needs) or ``"note"``; ``where`` the field or file; ``message``."""

    level: str
    where: str
    message: str


@dataclass
class TrainPlan:
    """What ``sqlsociety train`` would do with a profile (see the module docstring).

    Attributes:
        profile: profile name; source: the YAML it came from.
        phases: ``[{"step", "what"}]`` in run order (stage evaluations included).
        roles: ``[{"role", "kind", "alias", "served_by", "adapter"}]``.
        servers: ``[{"server", "detail"}]``.
        budgets: name -> text (tasks, steps, tokens, time bounds).
        gpu_stack: component -> ``{"needed": "required"|"optional"|"no", "present": bool}``.
        findings: errors, missing pieces and notes.
        expected_time: what is known of the time per phase (GPU profiles: that it is unmeasured);
            empty when the plan says nothing about it.
        resolved: the whole profile with every default filled in
            (:meth:`training.profile.TrainConfig.resolved`).
    """

    profile: str
    source: str
    phases: list[dict[str, str]] = field(default_factory=list)
    roles: list[dict[str, str]] = field(default_factory=list)
    servers: list[dict[str, str]] = field(default_factory=list)
    budgets: dict[str, str] = field(default_factory=dict)
    gpu_stack: dict[str, dict[str, Any]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    expected_time: str = ""
    resolved: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def missing(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "missing"]

    @property
    def runnable_here(self) -> bool:
        """No error and nothing the profile needs is missing on this machine."""
        return not self.errors and not self.missing

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"runnable_here": self.runnable_here}

    def render(self) -> str:
        """The plan as plain text (sections: phases, roles, servers, budgets, GPU stack, findings)."""
        out = [f"Training plan: profile {self.profile} ({self.source})", "", "Phases:"]
        out += [f"  {i + 1:>2}. {p['step']:<16} {p['what']}" for i, p in enumerate(self.phases)]
        out += ["", "Roles -> models / adapters:"]
        w = max((len(r["role"]) for r in self.roles), default=4)
        for r in self.roles:
            out.append(f"  {r['role']:<{w}}  {r['kind']:<10} alias {r['alias'] or '-':<14} {r['served_by']}")
            if r.get("adapter"):
                out.append(f"  {'':<{w}}  {'':<10} {r['adapter']}")
        out += ["", "Servers:"] + [f"  - {s['server']}: {s['detail']}" for s in self.servers]
        out += ["", "Budgets:"] + [f"  {k:<8} {v}" for k, v in self.budgets.items()]
        if self.resolved:
            import yaml

            out += ["", "Resolved profile (every default filled in):"]
            out += ["  " + line for line in yaml.safe_dump(self.resolved, sort_keys=False).splitlines()]
        if self.expected_time:
            out += ["", f"Expected time per phase: {self.expected_time}"]
        if self.gpu_stack:
            out += ["", "GPU stack:"]
            for name, s in self.gpu_stack.items():
                out.append(
                    f"  {name:<8} {s['needed']:<9} {'present' if s['present'] else 'absent'}"
                    + (f"  ({s['note']})" if s.get("note") else "")
                )
        notes = [f for f in self.findings if f.level == "note"]
        if notes:
            out += ["", "Notes:"] + [f"  - {f.where}: {f.message}" for f in notes]
        if self.missing:
            out += ["", "NOT RUNNABLE HERE -- this machine lacks what the profile needs:"]
            out += [f"  - {f.where}: {f.message}" for f in self.missing]
            out += [
                f"  Install the GPU stack on a CUDA machine: {INSTALL_GPU}",
                "  (the profile itself is valid; `sqlsociety train` without --dry-run refuses to start here)",
            ]
        if self.errors:
            out += ["", "ERRORS -- the profile is not valid:"] + [f"  - {f.where}: {f.message}" for f in self.errors]
        out += [
            "",
            "valid profile" + ("" if self.missing else ", runnable here")
            if not self.errors
            else f"{len(self.errors)} error(s)",
        ]
        return "\n".join(out)


# ============================================================================ checks


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _resolve_base_model(cfg: TrainConfig, findings: list[Finding]) -> str:
    """A one-line description of where ``base_model`` comes from (or an error finding)."""
    bm = cfg.base_model
    p = Path(bm).expanduser()
    vllm = cfg.serving.engine == "vllm"
    if bm in EMBEDDED_MODELS:
        spec = EMBEDDED_MODELS[bm]
        if vllm or cfg.grpo.backend != "trl":
            return (
                f"embedded {bm} ({spec.hf_name}); trained and served from its HF checkpoint "
                "(training.checkpoints.hf_checkpoint: the GGUF dequantised once, no hub access)"
            )
        return f"embedded {bm} ({spec.hf_name}), GGUF served by llama.cpp, HF checkpoint for training"
    if p.is_dir():
        if (p / "config.json").is_file():
            if not vllm:
                findings.append(
                    Finding(
                        "error",
                        "base_model",
                        f"{p} is a Hugging Face directory; llama.cpp serving needs "
                        "a GGUF or an embedded alias -- set serving.engine: vllm or give a .gguf",
                    )
                )
            return f"Hugging Face directory {p.resolve()}"
        findings.append(Finding("error", "base_model", f"{p} is a directory without config.json (not a HF model)"))
        return str(p)
    if bm.endswith(".gguf") or p.exists():
        if not p.is_file():
            findings.append(Finding("error", "base_model", f"GGUF file {p} does not exist"))
        return f"GGUF {p}"
    if vllm and bm.startswith(PATH_PREFIXES):
        findings.append(
            Finding(
                "missing",
                "base_model",
                f"Hugging Face directory {bm} is not on this machine: download it first "
                f"(`huggingface-cli download {hub_guess(p.name)} --local-dir {bm}`, from where the run starts)",
            )
        )
        return f"Hugging Face directory {bm} (absent here)"
    if HUB_ID.match(bm):
        findings.append(
            Finding(
                "error",
                "base_model",
                f"hub id {bm!r}: the trainers and the vLLM server take base_model through "
                "training.checkpoints.hf_checkpoint (embedded alias, .gguf or Hugging Face directory); download it "
                f"first (`huggingface-cli download {bm} --local-dir DIR`) and set base_model: DIR",
            )
        )
        return f"hub id {bm}"
    findings.append(
        Finding(
            "error",
            "base_model",
            f"{bm!r} is not an embedded alias ({', '.join(sorted(EMBEDDED_MODELS))}), "
            "an existing .gguf, a HF directory or a hub id owner/name",
        )
    )
    return bm


def _check_endpoint(alias: str, spec: Any, findings: list[Finding]) -> str:
    url = urlparse(spec.base_url)
    where = f"society models.{alias}"
    if not url.hostname:
        findings.append(Finding("error", where, f"base_url {spec.base_url!r} has no host"))
        return spec.base_url
    try:
        socket.getaddrinfo(url.hostname, url.port or (443 if url.scheme == "https" else 80))
    except (OSError, UnicodeError) as e:
        findings.append(Finding("error", where, f"host {url.hostname!r} of {spec.base_url} does not resolve ({e})"))
    if spec.api_key_env and not os.environ.get(spec.api_key_env):
        findings.append(Finding("error", where, f"api_key_env {spec.api_key_env} is not set; export it"))
    return f"endpoint {spec.base_url} model {spec.model} (not contacted)"


@dataclass
class _Read:
    """What a dry run reads outside the profile, all of it at once before any check
    (:func:`_read_outside`); a reader that failed leaves its value empty and its message in the
    matching ``*_error`` field, which the checks turn into a finding in their order.

    Attributes:
        resolved: :meth:`training.profile.TrainConfig.resolved`; society_file: the society config's path.
        problems: ``(dotted key, message)`` of each broken section (:attr:`TrainConfig.section_problems`);
            runners: ``gather.runners_problem()`` (None: fine).
        needs: :func:`training.gpu_stack.gpu_stack_needs`.
        society: the society config (None: it did not load); split: the same with the juniors and the
            senior on their own aliases (:func:`role_split_config`); kinds: role type -> its kind
            (:func:`role_kind`); personas: how many junior personas it has.
        n_train / n_dev: usable questions of the gather split (None: not counted) / the eval split.
        verl_cfg: the VERL YAML (empty when not read); llama: the llama-server binary (empty with
            ``serving.engine: vllm``, ``(not installed)`` when absent).
    """

    resolved: dict[str, Any]
    society_file: Path
    problems: list[tuple[str, str]]
    runners: str | None
    needs: dict[str, str]
    society: SocietyConfig | None = None
    society_error: str = ""
    split: SocietyConfig | None = None
    kinds: dict[str, str] = field(default_factory=dict)
    personas: int = 0
    n_train: int | None = None
    train_error: str = ""
    n_dev: int | None = None
    dev_error: str = ""
    verl_cfg: dict[str, Any] = field(default_factory=dict)
    verl_error: str = ""
    llama: str = ""
    llama_error: str = ""


def _read_outside(cfg: TrainConfig, phases: set[int]) -> _Read:
    """Read, once, everything the checks need from outside the profile: its resolved form and
    section problems, the GPU stack it needs, the society config (and its role split), the gather
    split's question count (when phase 1 or 3 runs) and the eval split's, the VERL YAML (when VERL
    may run and the ``grpo`` section is usable), the llama-server binary (llama.cpp serving). Never
    raises for a problem of the profile (it is kept for :func:`_check_profile`)."""
    problems = list(cfg.section_problems)
    got = _Read(resolved=cfg.resolved(), society_file=cfg.record.society_file, problems=problems,
                runners=cfg.gather.runners_problem(), needs=gpu_stack_needs(cfg))
    try:
        got.society = SocietyConfig.load(got.society_file)
    except ConfigError as e:
        got.society_error = str(e)
    if got.society is not None:
        got.split = role_split_config(got.society, per_persona=cfg.junior_adapters == "per_persona")
        got.kinds = {r.type: role_kind(r.type) for r in got.society.roles}
        got.personas = len(junior_personas(got.society))
    if 1 in phases or 3 in phases:
        try:
            got.n_train = len(load_examples(cfg.data_dir, cfg.gather.split))
        except DataError as e:
            got.train_error = str(e)
    try:
        got.n_dev = len(load_examples(cfg.data_dir, cfg.eval.split))
    except DataError as e:
        got.dev_error = str(e)
    grpo_broken = any(where.split(".")[0] == "grpo" for where, _ in problems)
    if not grpo_broken and cfg.grpo.backend in ("verl", "auto"):
        try:
            got.verl_cfg = load_verl_config(cfg.grpo.verl_config)
        except (FileNotFoundError, ValueError) as e:
            got.verl_error = str(e)
    if cfg.serving.engine != "vllm":
        try:
            got.llama = str(find_llama_server())
        except ServerNotInstalledError as e:
            got.llama, got.llama_error = "(not installed)", str(e)
    return got


@dataclass
class _Checked:
    """What the checks of :func:`plan_profile` found that the plan's sections are built from.

    Attributes:
        phases: the phases the run would run (subset of 1-4).
        sft / grpo: the profile's trainer sections, None when the section has problems (its
            defaults would be a guess).
        present: ``cuda`` / ``vllm`` / ``verl`` / ``unsloth`` -> available on this machine.
        society: the society config, None when it does not load; split, kinds, personas: as
            :class:`_Read` has them.
        base_desc: where ``base_model`` comes from (one line).
        hf_base: :func:`base_is_hf_directory`.
        n_train / n_dev: usable questions of the gather / eval split (None: not counted or unreadable).
        verl_may_run: phase 3 may run through VERL (``grpo.backend: verl``, or ``auto`` with VERL and CUDA).
        verl_cfg: the VERL YAML (empty when not read).
        llama: the llama-server binary, ``(not installed)``, or empty with ``serving.engine: vllm``.
    """

    phases: set[int]
    sft: Any
    grpo: Any
    present: dict[str, bool]
    society: SocietyConfig | None
    split: SocietyConfig | None
    kinds: dict[str, str]
    personas: int
    base_desc: str
    hf_base: bool
    n_train: int | None
    n_dev: int | None
    verl_may_run: bool
    verl_cfg: dict[str, Any]
    llama: str


def plan_profile(cfg: TrainConfig, *, source: str = "", phases: set[int] | None = None) -> TrainPlan:
    """Validate ``cfg`` and build its :class:`TrainPlan` (see the module docstring). Never raises for
    a problem of the profile: each becomes a :class:`Finding` (in the order the checks run: sections,
    GPU stack, models, files, roles, noise control, budgets)."""
    phases = set(phases or PHASES)
    got = _read_outside(cfg, phases)
    plan = TrainPlan(profile=cfg.name, source=source or "(in memory)", resolved=got.resolved)
    c = _check_profile(cfg, phases, plan, got)
    served_embedded = _plan_roles(cfg, c, plan)
    _plan_servers(cfg, c, served_embedded, plan)
    _note_noise_control(cfg, c, plan.findings)
    society_after = _plan_phases(cfg, c, plan)
    _plan_budgets(cfg, c, society_after, plan)
    _plan_expected_time(cfg, c, plan)
    return plan


# ============================================================================ plan steps


def _check_profile(cfg: TrainConfig, phases: set[int], plan: TrainPlan, got: _Read) -> _Checked:
    """The checks before the plan, on what :func:`_read_outside` read: typed sections, GPU stack (into
    ``plan.gpu_stack``), models, files; each problem appended to ``plan.findings`` in that order."""
    F = plan.findings
    sft, grpo = _check_sections(cfg, got, F)
    present = _check_gpu_stack(got.needs, plan)
    base_desc = _resolve_base_model(cfg, F)
    for where, error in (("society_config", got.society_error), ("gather.split", got.train_error),
                         ("eval.split", got.dev_error)):
        if error:
            F.append(Finding("error", where, error))
    grpo_backend = cfg.grpo.backend
    verl_may_run = grpo_backend == "verl" or (grpo_backend == "auto" and present["verl"] and present["cuda"])
    if got.verl_error:
        F.append(Finding("error" if grpo_backend == "verl" else "note", "grpo.verl_config", got.verl_error))
    if got.llama_error:
        F.append(Finding("error", "serving", got.llama_error))
    return _Checked(phases=phases, sft=sft, grpo=grpo, present=present, society=got.society, split=got.split,
                    kinds=got.kinds, personas=got.personas, base_desc=base_desc, hf_base=base_is_hf_directory(cfg),
                    n_train=got.n_train, n_dev=got.n_dev, verl_may_run=verl_may_run, verl_cfg=got.verl_cfg,
                    llama=got.llama)


def _check_sections(cfg: TrainConfig, got: _Read, F: list[Finding]) -> tuple[Any, Any]:
    """Errors for the sections :meth:`TrainConfig.load` could not build and for a gather with no
    runner; returns ``(sft, grpo)``, each None when its section is broken."""
    F += [Finding("error", where, msg) for where, msg in got.problems]
    broken = {where.split(".")[0] for where, _ in got.problems}
    sft = None if "sft" in broken else cfg.sft
    grpo = None if "grpo" in broken else cfg.grpo
    if got.runners is not None:
        F.append(Finding("error", "gather.n_runners", got.runners))
    return sft, grpo


def _check_gpu_stack(needs: dict[str, str], plan: TrainPlan) -> dict[str, bool]:
    """Fill ``plan.gpu_stack`` (``needs``: :func:`training.gpu_stack.gpu_stack_needs`, against what this
    machine has) and add a ``missing`` finding for each required component absent; returns component
    -> present."""
    F = plan.findings
    present = {"cuda": _cuda(), "vllm": _has("vllm"), "verl": _has("verl"), "unsloth": _has("unsloth")}
    for comp, need in needs.items():
        note = ""
        if need == "optional" and not present[comp]:
            note = {
                "cuda": "trainers run on the CPU",
                "verl": "GRPO falls back to TRL in-process",
                "unsloth": "SFT falls back to TRL",
                "vllm": "",
            }.get(comp, "")
        plan.gpu_stack[comp] = {"needed": need, "present": present[comp], "note": note}
        if need == "required" and not present[comp]:
            what = {
                "cuda": "no CUDA device visible to torch (torch.cuda.is_available() is False)",
                "vllm": "vllm is not installed (serving.engine: vllm, and VERL's rollouts)",
                "verl": "verl is not installed (grpo.backend: verl)",
                "unsloth": "unsloth is not installed (sft.backend: unsloth)",
            }[comp]
            F.append(Finding("missing", comp, what))
    if needs["verl"] == "required" and not _has("agentlightning"):
        F.append(Finding("missing", "agentlightning", "agentlightning is not installed (VERL runs through agl.VERL)"))
    return present


def _plan_roles(cfg: TrainConfig, c: _Checked, plan: TrainPlan) -> dict[str, list[str]]:
    """``plan.roles``: each enabled role of the society (its juniors and senior on their own aliases,
    :func:`role_split_config`) with what serves it and the adapter it gets; returns embedded model ->
    the aliases served from it. Nothing when the society config did not load."""
    served_embedded: dict[str, list[str]] = {}
    split = c.split
    if split is None:
        return served_embedded
    for r in split.roles:
        if not r.enabled:
            continue
        kind = c.kinds[r.type]
        spec = split.models.get(r.model) if r.model else None
        served = _served_by(cfg, c, r, kind, spec, plan.findings)
        if spec is not None and not spec.base_url:
            served_embedded.setdefault(spec.embedded, []).append(r.model)
        adapter = _role_adapter(cfg, c, r, kind)
        if spec is not None and spec.base_url and kind in ("junior", "senior"):
            adapter = "external endpoint: trained adapters are not routed to it"
        plan.roles.append(
            {"role": r.name, "kind": kind, "alias": r.model or "", "served_by": served, "adapter": adapter}
        )
    return served_embedded


def _served_by(cfg: TrainConfig, c: _Checked, r: Any, kind: str, spec: Any, F: list[Finding]) -> str:
    """What serves role ``r`` (model spec ``spec``, None for a role without a model): its endpoint
    (checked, :func:`_check_endpoint`), a llama.cpp or vLLM server, or its policy / SQL only."""
    vllm = cfg.serving.engine == "vllm"
    if spec is None:
        return "no model (runs SQL only)" if kind != "supervisor" else f"policy {r.policy or 'majority_vote'}"
    if spec.base_url:
        return _check_endpoint(r.model, spec, F)
    if spec.embedded not in EMBEDDED_MODELS:
        F.append(
            Finding("error", f"society models.{r.model}", f"unknown embedded model {spec.embedded!r}")
        )
    same = spec.embedded == cfg.base_model or c.hf_base
    if vllm and same:
        return f"vLLM server (base model {cfg.base_model}, for {spec.embedded})" if c.hf_base \
            else "vLLM server (base model)"
    if vllm:
        return f"llama.cpp server ({spec.embedded}; not the base_model, so not on vLLM)"
    return f"llama.cpp server ({spec.embedded})"


def _role_adapter(cfg: TrainConfig, c: _Checked, r: Any, kind: str) -> str:
    """What a role gets from the phases that run: the juniors' LoRA after phase 2 (shared or their
    persona's own), the senior's LoRA or VERL weights after phase 3, the supervisor's bandit after
    phase 4; empty otherwise."""
    vllm = cfg.serving.engine == "vllm"
    if kind == "junior" and 2 in c.phases:
        return (f"after phase 2: LoRA {r.model} (its persona's own adapter, RUN_DIR/phases/2-sft/adapters/"
                f"{r.model}; sft.max_steps for each)" if cfg.junior_adapters == "per_persona"
                else f"after phase 2: LoRA {JUNIOR_ALIAS} (RUN_DIR/phases/2-sft/adapter)") + (
            ", loaded by name into vLLM" if vllm else ", exported to GGUF for llama.cpp"
        )
    if kind == "senior" and 3 in c.phases:
        if c.verl_may_run:
            return (
                f"phase 3: VERL trains all its weights live (its own vLLM rollout workers serve the "
                f"policy as main_llm, bound to {SENIOR_ALIAS}); after: the newest step's Hugging Face "
                f"weights, served as {SENIOR_ALIAS} by a second vLLM server"
            )
        adapter = f"after phase 3: LoRA {SENIOR_ALIAS} (RUN_DIR/phases/3-grpo/adapter)"
        return adapter + (", loaded by name into vLLM" if vllm else ", exported to GGUF for llama.cpp")
    if kind == "supervisor" and 4 in c.phases:
        return "after phase 4: bandit policy RUN_DIR/phases/4-bandit/policy.joblib"
    return ""


def _plan_servers(cfg: TrainConfig, c: _Checked, served_embedded: dict[str, list[str]], plan: TrainPlan) -> None:
    """``plan.servers``: the vLLM server(s) or the llama-server binary, a llama.cpp server per other
    embedded model, the LLMProxy, and the rollout store with its runners."""
    if cfg.serving.engine == "vllm":
        plan.servers += _vllm_servers(cfg, c)
        others = [] if c.hf_base else sorted(m for m in served_embedded if m != cfg.base_model)
    else:
        plan.servers.append({"server": "llama.cpp llama-server", "detail": f"binary {c.llama}"})
        others = sorted(served_embedded)
    for m in others:
        plan.servers.append(
            {
                "server": f"llama.cpp llama-server for {m}",
                "detail": f"aliases {', '.join(sorted(set(served_embedded[m])))}; GGUF "
                f"{EMBEDDED_MODELS[m].filename if m in EMBEDDED_MODELS else '?'}",
            }
        )
    if cfg.llm_proxy:
        plan.servers.append(
            {
                "server": "Agent Lightning LLMProxy",
                "detail": "every model alias through one proxy (society.proxy.llm_proxy), spans recorded per call",
            }
        )
    plan.servers.append(_store_server(cfg.gather))


def _vllm_servers(cfg: TrainConfig, c: _Checked) -> list[dict[str, str]]:
    """``serving.engine: vllm``: the base model's server with the adapters by name, and the trained
    senior's server after phase 3 when VERL may train it."""
    s = cfg.serving
    servers = [
        {
            "server": "vLLM OpenAI server (society.vllm_serving.VLLMServer)",
            "detail": (
                f"base {c.base_desc}; loopback, free port, health check, stopped with the run; --enable-lora "
                f"--max-lora-rank {s.max_lora_rank} --max-loras {s.max_loras}, adapters by name {JUNIOR_ALIAS}"
                f"{'' if c.verl_may_run else ' / ' + SENIOR_ALIAS} (hot-loaded after their phase); "
                f"--gpu-memory-utilization {s.gpu_memory_utilization}, --max-model-len {s.max_model_len}, "
                f"--dtype {s.dtype}, --tensor-parallel-size {s.tensor_parallel_size}"
            ),
        }
    ]
    if c.verl_may_run and 3 in c.phases:
        servers.append(
            {
                "server": "vLLM OpenAI server for the trained senior (after phase 3)",
                "detail": f"VERL's newest Hugging Face weights (RUN_DIR/phases/3-grpo/verl_checkpoints/"
                f"global_step_N/actor/huggingface) as {SENIOR_ALIAS}; --gpu-memory-utilization "
                f"{s.gpu_memory_utilization}, log RUN_DIR/vllm-senior.log",
            }
        )
    return servers


def _store_server(g: GatherConfig) -> dict[str, str]:
    """The rollout store's server (host, port, runners here and remote) for the ``gather`` section ``g``."""
    remote = (
        f", {g.remote_runners} remote runner(s) expected (sqlsociety runner --store-url http://{g.store_host}:"
        f"{g.store_port or 'PORT'}; RUN_DIR/store_url while phase 1 runs)"
        if g.remote_runners
        else ""
    )
    return {
        "server": "rollout store",
        "detail": f"RUN_DIR/store.sqlite behind Agent Lightning's LightningStoreServer on {g.store_host}"
        f"{':' + str(g.store_port) if g.store_port else ''}, {g.n_runners} runner(s) on this host{remote}",
    }


def _note_noise_control(cfg: TrainConfig, c: _Checked, F: list[Finding]) -> None:
    """A note when the noise control (``eval.noise_repeat``) is on though every junior samples at
    temperature 0, or off though some junior samples at temperature > 0 (with the juniors-only
    evaluation on)."""
    if c.society is not None and cfg.eval.junior_limit:
        hot = [r.name for r in c.society.roles
               if r.enabled and c.kinds[r.type] == "junior" and r.sampling.temperature > 0]
        if cfg.eval.noise_repeat and not hot:
            F.append(Finding("note", "eval.noise_repeat", "every junior samples at temperature 0: the repeat shows "
                             "only the server's own nondeterminism; it costs one more juniors-only evaluation"))
        elif hot and not cfg.eval.noise_repeat:
            F.append(Finding("note", "eval.noise_repeat", f"{', '.join(hot)} sample(s) at temperature > 0 but the "
                             "noise control is off: the juniors' SFT effects are reported without a noise floor"))


def _role_evals(e: Any, compare_shared: bool = False) -> dict[str, list[str]]:
    """Stage (``baseline``, ``sft``, ``grpo``) -> the role-level evaluations run there (``eval`` section ``e``)."""
    return {
        "baseline": ([f"juniors only on {e.junior_limit} questions"] if e.junior_limit else [])
        + ([f"noise control: juniors only again on the same {e.junior_limit} questions, each junior's sampling "
            f"seed + {NOISE_SEED_OFFSET} (eval/roles/{NOISE_STAGE}.jsonl)"] if e.noise_repeat else [])
        + ([f"senior only on <= {e.senior_limit} of the juniors' chosen candidates"] if e.senior_limit else [])
        + ([f"one-shot control (single, the writer junior once) on the same {e.junior_limit or e.limit} "
            "questions"] if e.single else []),
        "sft": ([f"juniors only on the same {e.junior_limit} questions"] if e.junior_limit else [])
        + ([f"juniors only again on the same {e.junior_limit} questions, every junior on the one shared adapter "
            f"(eval/roles/{SHARED_STAGE}.jsonl)"] if compare_shared else [])
        + ([f"one-shot control on the same {e.junior_limit or e.limit} questions, the writer on its trained "
            "adapter"] if e.single else []),
        "grpo": [f"senior only on the same <= {e.senior_limit} inputs"] if e.senior_limit else [],
    }


def _phase_what(cfg: TrainConfig, c: _Checked) -> dict[int, str]:
    """Phase (1-4) -> what it does under this profile (one line each)."""
    sft_backend = (
        "unsloth"
        if cfg.sft.backend == "unsloth" or (cfg.sft.backend == "auto" and c.present["unsloth"] and c.present["cuda"])
        else "TRL"
    )
    grpo = c.grpo
    return {
        1: (f"society rollouts on {cfg.gather.limit} {cfg.gather.split} tasks drawn across its databases with seed "
            f"{cfg.gather.sample_seed}" if cfg.gather.sample_seed is not None else
            f"society rollouts on {cfg.gather.split} tasks {cfg.gather.offset}.."
            f"{cfg.gather.offset + cfg.gather.limit}")
        + f" with {cfg.gather.n_runners} runner(s) into the store"
        + (f"; juniors only on {'another' if cfg.gather.sample_seed is not None else 'the next'} "
           f"{cfg.gather.junior_limit}" if cfg.gather.junior_limit else "")
        + ("; the questions no junior solved again with the gold SQL as a hint (rationalization)"
           if cfg.gather.rationalize else ""),
        2: f"SFT of the juniors ({sft_backend}, LoRA) on their conversations whose own SQL matched gold",
        3: (
            "GRPO of the senior through Agent Lightning's VERL on its spans (agent_match "
            f"{grpo.agent_match if grpo else '?'})"
        )
        if c.verl_may_run
        else "GRPO of the senior with TRL (in-process)"
        + (f", warm-started by SFT on repair pairs (on {'at most ' if grpo.warm_start_cases else ''}"
           f"{grpo.warm_start_cases or 'all the'} wrong queries: {grpo.warm_start_samples} draws each, then "
           f"{grpo.warm_start_samples} with the gold SQL as a hint)"
           if grpo is not None and grpo.warm_start is not None else ""),
        4: "contextual bandit for the supervisor on its logged decisions",
    }


def _plan_phases(cfg: TrainConfig, c: _Checked, plan: TrainPlan) -> list[int]:
    """``plan.phases``: the baseline evaluations, each phase with the evaluations after it, the report;
    returns the phases after which the society is evaluated (``eval.society_stages``)."""
    phases = c.phases
    plan.phases.append(
        {
            "step": "eval baseline",
            "what": f"{cfg.eval.limit} {cfg.eval.split} questions (seed "
            f"{cfg.eval.seed}), concurrency {cfg.eval.concurrency}",
        }
    )
    e = cfg.eval
    role_evals = _role_evals(e, cfg.compare_shared_adapter)
    if role_evals["baseline"]:
        plan.phases.append({"step": "eval baseline roles", "what": "; ".join(role_evals["baseline"])})
    what = _phase_what(cfg, c)
    society_after = [k for k in sorted(phases) if k in STAGE_AFTER_PHASE
                     and (e.society_stages == "every" or k == max(phases))]
    for k in sorted(phases):
        plan.phases.append({"step": f"{k} {PHASES[k]}", "what": what[k]})
        if k in STAGE_AFTER_PHASE and role_evals.get(STAGE_AFTER_PHASE[k]):
            plan.phases.append({"step": f"eval {STAGE_AFTER_PHASE[k]} roles",
                                "what": "; ".join(role_evals[STAGE_AFTER_PHASE[k]])})
        if k in society_after:
            plan.phases.append(
                {"step": f"eval {STAGE_AFTER_PHASE[k]}", "what": f"the same {cfg.eval.limit} questions"}
            )
    plan.phases.append({"step": "report", "what": "RUN_DIR/report.html, report.md, train_summary.json"})
    return society_after


def _plan_budgets(cfg: TrainConfig, c: _Checked, society_after: list[int], plan: TrainPlan) -> None:
    """``plan.budgets``: gather, eval, sft, grpo (when their sections are usable), bandit."""
    tasks = _gather_budget(cfg, c, plan)
    plan.budgets["eval"] = _eval_budget(cfg, c, society_after)
    if c.sft is not None:
        plan.budgets["sft"] = _sft_budget(cfg, c)
    if c.grpo is not None:
        plan.budgets["grpo"] = _grpo_budget(c, tasks)
    plan.budgets["bandit"] = "fitted in seconds on the logged supervisor decisions"


def _gather_budget(cfg: TrainConfig, c: _Checked, plan: TrainPlan) -> int:
    """``plan.budgets["gather"]`` (tasks, runners, the time bound at the rollout timeout) and a note
    when the split has fewer questions than ``gather.limit``; returns the society's task count."""
    g = cfg.gather
    n_train = c.n_train
    start = 0 if g.sample_seed is not None else g.offset
    tasks = g.limit if n_train is None else max(0, min(g.limit, n_train - start))
    if n_train is not None and tasks < g.limit:
        plan.findings.append(
            Finding(
                "note",
                "gather.limit",
                f"{g.split} has {n_train} usable questions: {tasks} tasks after offset {g.offset}, not {g.limit}",
            )
        )
    waves = math.ceil(tasks / max(1, g.n_runners + g.remote_runners))
    bound = (
        f", at most {waves * g.rollout_timeout_s / 3600:.1f} h at the rollout timeout" if g.rollout_timeout_s else ""
    )
    plan.budgets["gather"] = (
        f"{tasks} tasks, {g.n_runners} runner(s)"
        + (f" + {g.remote_runners} remote" if g.remote_runners else "")
        + f", rollout timeout {g.rollout_timeout_s} s{bound}"
    )
    return tasks


def _eval_budget(cfg: TrainConfig, c: _Checked, society_after: list[int]) -> str:
    """Questions x stages of the society's evaluation, and of the role-level ones that are on."""
    e = cfg.eval
    phases = c.phases
    n_eval = cfg.eval.limit if c.n_dev is None else min(cfg.eval.limit, c.n_dev)
    n_stages = 1 + len(society_after)
    return f"{n_eval} questions x {n_stages} stage(s)" + (
        f"; juniors only {e.junior_limit} questions x {1 + (2 in phases) + e.noise_repeat}"
        + (" (one is the noise control)" if e.noise_repeat else "") if e.junior_limit else "") + (
        f"; senior only <= {e.senior_limit} inputs x {1 + (3 in phases)}" if e.senior_limit else "") + (
        f"; one-shot control {e.junior_limit or n_eval} questions x {1 + (2 in phases)} (one LLM call each)"
        if e.single else "")


def _sft_budget(cfg: TrainConfig, c: _Checked) -> str:
    """Steps x sequences of the juniors' SFT (for each persona adapter with ``per_persona``)."""
    sft = c.sft
    seqs = sft.max_steps * sft.per_device_train_batch_size * sft.gradient_accumulation_steps
    n_personas = c.personas if c.society is not None and cfg.junior_adapters == "per_persona" else 0
    return (
        f"{sft.max_steps} steps x {sft.per_device_train_batch_size * sft.gradient_accumulation_steps} "
        f"sequences = {seqs} sequences of <= {sft.max_length} tokens, LoRA r={sft.lora_r}"
    ) + (f", for each of the {n_personas} persona adapters" if n_personas else "") + (
        ", and once more for one shared adapter (compare_shared_adapter)" if cfg.compare_shared_adapter else "")


def _grpo_budget(c: _Checked, tasks: int) -> str:
    """VERL's epochs x batches over the ``tasks`` gathered tasks, or TRL's steps x prompts x completions."""
    grpo = c.grpo
    if c.verl_may_run and c.verl_cfg:
        d = c.verl_cfg.get("data") or {}
        ro = (c.verl_cfg.get("actor_rollout_ref") or {}).get("rollout") or {}
        tr = c.verl_cfg.get("trainer") or {}
        bs = int(d.get("train_batch_size") or 1)
        epochs = int(tr.get("total_epochs") or 1)
        steps = epochs * math.ceil(tasks / bs) if tasks else 0
        return (
            f"VERL: {epochs} epoch(s) x ceil({tasks} tasks / train_batch_size {bs}) = {steps} steps, "
            f"{ro.get('n', '?')} society runs per task, responses <= "
            f"{d.get('max_response_length', '?')} tokens, {grpo.n_runners} runner(s)"
        )
    return (
        f"TRL: {grpo.max_steps} steps x {grpo.prompts_per_step} prompt(s) x "
        f"{grpo.num_generations} completions of <= {grpo.max_completion_length} tokens"
    )


def _plan_expected_time(cfg: TrainConfig, c: _Checked, plan: TrainPlan) -> None:
    """``plan.expected_time`` for a GPU profile (vLLM or VERL): unmeasured, and why."""
    if cfg.serving.engine == "vllm" or c.verl_may_run:
        plan.expected_time = (
            "unmeasured for every phase (" + ", ".join(p["step"] for p in plan.phases[:-1])
            + "): this profile has never run on a GPU, and CPU timings do not carry over to vLLM/VERL; "
            "the work per phase is under Budgets"
        )
