"""Which model alias each role of the society is served under while it trains: the juniors and the
senior get aliases of their own (:data:`JUNIOR_ALIAS`, :data:`SENIOR_ALIAS`, or one per junior
persona, :func:`persona_alias`), so a trained adapter can be routed to one role without changing
the others; and the noise control's copy of the society with shifted junior seeds
(:func:`with_junior_seed_offset`). Pure functions of a :class:`society.config.SocietyConfig`.
"""

from __future__ import annotations

from typing import Any

from society.roles import ROLE_TYPES

__all__ = ["JUNIOR_ADAPTER_MODES", "JUNIOR_ALIAS", "NOISE_SEED_OFFSET", "SENIOR_ALIAS", "junior_persona",
           "junior_personas", "persona_alias", "role_kind", "role_split_config", "with_junior_seed_offset"]

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
