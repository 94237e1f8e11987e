"""Which model alias each role of the society is served under while it trains: the juniors and the
senior get aliases of their own (:data:`JUNIOR_ALIAS`, :data:`SENIOR_ALIAS`, or one per junior
persona, :func:`persona_alias`), so a trained adapter can be routed to one role without changing
the others; the society as a run's finished phases route it (:func:`route_society`: their adapters,
:func:`trained_adapters`, and the bandit supervisor); the one-shot control's writer
(:func:`single_writer`); and the noise control's copy of the society with shifted junior seeds
(:func:`with_junior_seed_offset`). Pure functions of a :class:`society.config.SocietyConfig` and of
the phases' ``done.json`` contents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from society.roles import ROLE_TYPES
from training.profile import TrainConfigError

__all__ = ["JUNIOR_ADAPTER_MODES", "JUNIOR_ALIAS", "NOISE_SEED_OFFSET", "SENIOR_ALIAS", "junior_mode",
           "junior_persona", "junior_personas", "persona_alias", "role_kind", "role_split_config", "route_society",
           "senior_role", "single_writer", "trained_adapters", "with_junior_seed_offset"]

#: Alias the pipeline gives the juniors / the senior when they share a model alias with other roles,
#: so that routing a trained adapter changes that role only.
JUNIOR_ALIAS = "junior_policy"
SENIOR_ALIAS = "senior_policy"

#: ``junior_adapters`` of a profile: ``shared`` -- one LoRA adapter for every junior persona, trained
#: on all their admitted conversations (alias :data:`JUNIOR_ALIAS`); ``per_persona`` -- one adapter
#: per persona, trained on that persona's own admitted conversations and served to it alone
#: (alias :func:`persona_alias`), all by the one llama-server.
JUNIOR_ADAPTER_MODES = ("shared", "per_persona")


def persona_alias(persona: str) -> str:
    """The model alias of one junior persona's own adapter (``junior_adapters: per_persona``):
    ``junior_policy_<persona>``, characters other than letters, digits, ``_``, ``-`` and ``.``
    replaced by ``_`` (the alias names a llama-server LoRA and a LiteLLM model).

    >>> persona_alias("step_by_step")
    'junior_policy_step_by_step'
    >>> persona_alias("my persona/2")
    'junior_policy_my_persona_2'
    """
    return JUNIOR_ALIAS + "_" + "".join(c if c.isascii() and (c.isalnum() or c in "_-.") else "_" for c in persona)


def junior_persona(role: Any) -> str:
    """A junior role's persona as adapters are keyed: its ``persona``, else its name (what the
    society records as the candidate's persona)."""
    return str(role.persona or role.name)


def junior_personas(society: Any) -> list[str]:
    """The personas of the society's enabled junior roles, in config order, each once."""
    out: list[str] = []
    for r in society.roles:
        if r.enabled and role_kind(r.type) == "junior" and junior_persona(r) not in out:
            out.append(junior_persona(r))
    return out


def role_split_config(society: Any, *, per_persona: bool = False) -> Any:
    """Give the juniors and the senior model aliases of their own (``junior_policy``,
    ``senior_policy``) bound to what they used before, so a trained adapter can be routed to one
    role without changing the others; with ``per_persona`` every junior persona gets an alias of
    its own (:func:`persona_alias`), so each can be served its own adapter. Idempotent."""
    models = dict(society.models)
    roles = []
    for r in society.roles:
        kind = role_kind(r.type)
        target = ((persona_alias(junior_persona(r)) if per_persona else JUNIOR_ALIAS) if kind == "junior"
                  else SENIOR_ALIAS if kind == "senior" else None)
        if target and r.model and r.model != target:
            models.setdefault(target, models[r.model])
            r = r.model_copy(update={"model": target})
        roles.append(r)
    return society.model_copy(update={"models": models, "roles": roles})


def role_kind(role_type: str) -> str:
    """The kind (``junior``, ``senior``, ``supervisor``, ...) of a society role type
    (:data:`society.roles.ROLE_TYPES`).

    >>> role_kind("junior"), role_kind("execution_reviewer")
    ('junior', 'reviewer')
    """
    return ROLE_TYPES[role_type].kind


def senior_role(society: Any) -> Any | None:
    """The society's first enabled senior role (its ``RoleConfig``), or None when it has none."""
    return next((r for r in society.roles if r.enabled and role_kind(r.type) == "senior"), None)


#: The noise control's sampling-seed shift (``eval.noise_repeat``): the second evaluation of the
#: untrained juniors runs every junior with ``seed + NOISE_SEED_OFFSET``.
NOISE_SEED_OFFSET = 1000


def with_junior_seed_offset(society: Any, offset: int = NOISE_SEED_OFFSET) -> Any:
    """A copy of ``society`` whose junior roles sample with ``seed + offset``; temperature, every other
    sampling field and every other role unchanged.

    llama.cpp with the same seed, temperature and prompt repeats its output token for token, so a
    repeat of an evaluation measures sampling noise only with another seed. A junior without a seed
    (``sampling.seed: null``) keeps None: the server then draws a random seed per request, so its two
    evaluations differ anyway. At temperature 0 the seed does not matter and only the server's own
    nondeterminism (batching) can move the repeat."""
    roles = []
    for r in society.roles:
        if role_kind(r.type) == "junior" and r.sampling.seed is not None:
            r = r.model_copy(update={"sampling": r.sampling.model_copy(update={"seed": r.sampling.seed + offset})})
        roles.append(r)
    return society.model_copy(update={"roles": roles})


# ----------------------------------------------------------------------------- routing by finished phases


def junior_mode(done: dict[int, dict[str, Any] | None], profile_mode: str) -> str:
    """``shared`` or ``per_persona`` (:data:`JUNIOR_ADAPTER_MODES`): what a finished phase 2 trained
    (``done[2]``, its ``done.json``; one written before the choice existed: ``shared``), else the
    profile's ``junior_adapters`` (``profile_mode``).

    >>> junior_mode({2: None}, "per_persona"), junior_mode({2: {}}, "per_persona")
    ('per_persona', 'shared')
    """
    if done.get(2) is not None:
        return str(done[2].get("junior_adapters") or "shared")
    return profile_mode


def trained_adapters(done: dict[int, dict[str, Any] | None]) -> dict[str, Path]:
    """Role alias -> PEFT adapter directory of the finished phases 2 (juniors: one alias, or one per
    persona that had rows to train on) and 3 (senior), from their ``done.json`` (``done[k]``).

    >>> sorted(trained_adapters({2: {"adapter": "a"}, 3: {"adapter": "s"}}).items())
    [('junior_policy', PosixPath('a')), ('senior_policy', PosixPath('s'))]
    >>> trained_adapters({2: {"junior_adapters": "per_persona", "adapters": {"p": {"adapter": None}}}})
    {}
    """
    out = {}
    sft = done.get(2)
    if sft and sft.get("junior_adapters") == "per_persona":
        for persona, info in (sft.get("adapters") or {}).items():
            if info.get("adapter"):
                out[persona_alias(persona)] = Path(info["adapter"])
    elif sft and sft.get("adapter"):
        out[JUNIOR_ALIAS] = Path(sft["adapter"])
    grpo = done.get(3)
    if grpo and grpo.get("adapter"):
        out[SENIOR_ALIAS] = Path(grpo["adapter"])
    return out


def route_society(society: Any, done: dict[int, dict[str, Any] | None], profile_mode: str) -> Any:
    """``society`` as a stage of a run runs it: the juniors and the senior on aliases of their own
    (:func:`role_split_config`; one per junior persona when :func:`junior_mode` is ``per_persona``)
    and, once phase 4 finished (``done[4]``), the supervisor on the bandit policy it wrote."""
    sc = role_split_config(society, per_persona=junior_mode(done, profile_mode) == "per_persona")
    bandit = done.get(4)
    if bandit:
        roles = [r.model_copy(update={"policy": "bandit", "options": {**r.options, "path": bandit["policy"]}})
                 if role_kind(r.type) == "supervisor" else r for r in sc.roles]
        sc = sc.model_copy(update={"roles": roles})
    return sc


def single_writer(society: Any, society_file: Path) -> tuple[str, str | None]:
    """``(role, model alias)`` of the junior the one-shot ``single`` agent writes with
    (``baselines.writer`` of the society config, as :mod:`society.baselines` finds it).

    Raises:
        training.profile.TrainConfigError: the writer is not an enabled junior role of the society (the
            message names the config ``society_file``, the junior roles it has and ``eval.single: false``).
    """
    name = society.baselines.writer
    insts = society.instances("junior")
    inst = next((i for i in insts if name in (i.name, i.config.name)), None)
    if inst is None:
        raise TrainConfigError(
            f"eval.single: baselines.writer {name!r} of {society_file} is not an enabled junior role "
            f"(its juniors: {[i.name for i in insts]}); set baselines.writer to one of them, or eval.single: "
            "false")
    return inst.config.name, inst.config.model
