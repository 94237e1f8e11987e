"""Society configuration: which roles exist, what model each is bound to, and the run limits.

A YAML file (``configs/society.yaml`` is the default, ``configs/smoke.yaml`` the SmolLM2
profile) is validated by the pydantic models below. Shape::

    name: default
    models:                       # alias -> where the model is served
      juniors:
        embedded: qwen2.5-coder-0.5b          # started by the CLI (llama.cpp llama-server)
      remote:
        base_url: http://localhost:8000/v1    # any OpenAI-compatible endpoint
        model: Qwen/Qwen2.5-Coder-7B-Instruct
        api_key_env: OPENAI_API_KEY           # name of the variable holding the key (optional)
    roles:                        # role instances; `type` picks the node builder (society.roles)
      - name: junior_direct
        type: junior
        persona: direct
        model: juniors
        prompt: junior_direct                 # a name in society.prompts.PROMPTS, or {system:, user:}
        sampling: {temperature: 0.2, max_tokens: 200, seed: 1}
        count: 1                              # >1 makes junior_direct_1, junior_direct_2, ...
      - name: supervisor
        type: supervisor
        policy: majority_vote                 # llm | majority_vote | bandit | first | random
        ...
    limits: {max_review_rounds: 2, max_junior_rounds: 2}

Runtime endpoint override (the trainer routes an alias to a LoRA-served model or to Agent
Lightning's ``resources['main_llm']``): :meth:`SocietyConfig.with_endpoint`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from society.policies import POLICIES, make_policy
from society.prompts import PROMPTS
from society.roles import ROLE_TYPES
from society.settings import (
    CONFIG_DIR,
    DEFAULT_CONFIG,
    SMOKE_CONFIG,
    BaselineSettings,
    ConfigError,
    ExecutionSettings,
    Limits,
    LLMSettings,
    ModelSpec,
    PromptSpec,
    RoleConfig,
    Sampling,
    SchemaSettings,
    _Strict,
)

# the settings are re-exported: they are part of the config's API
__all__ = [
    "CONFIG_DIR",
    "DEFAULT_CONFIG",
    "SMOKE_CONFIG",
    "BaselineSettings",
    "ConfigError",
    "ExecutionSettings",
    "LLMSettings",
    "Limits",
    "ModelSpec",
    "PromptSpec",
    "RoleConfig",
    "RoleInstance",
    "Sampling",
    "SchemaSettings",
    "SocietyConfig",
]


class SocietyConfig(_Strict):
    """The whole configuration (see the module docstring for the YAML shape).

    Raises (on construction):
        pydantic.ValidationError: a field is malformed, a role names an unknown model alias,
            role type, policy or prompt, or names are duplicated.
    """

    name: str = "society"
    models: dict[str, ModelSpec]
    roles: list[RoleConfig]
    limits: Limits = Field(default_factory=Limits)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    schema_: SchemaSettings = Field(default_factory=SchemaSettings, alias="schema")
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    baselines: BaselineSettings = Field(default_factory=BaselineSettings)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _check_bindings(self) -> SocietyConfig:
        names: set[str] = set()
        for r in self.roles:
            if r.name in names:
                raise ValueError(f"role name {r.name!r} is used twice; role names must be unique")
            names.add(r.name)
            if r.type not in ROLE_TYPES:
                raise ValueError(f"role {r.name}: unknown type {r.type!r}; known types: {sorted(ROLE_TYPES)}")
            rtype = ROLE_TYPES[r.type]
            if rtype.needs_model and not r.model:
                raise ValueError(
                    f"role {r.name} ({r.type}) calls an LLM: set `model:` to one of {sorted(self.models)}"
                )
            if r.model and r.model not in self.models:
                raise ValueError(f"role {r.name}: model alias {r.model!r} is not in `models:` ({sorted(self.models)})")
            if isinstance(r.prompt, str) and r.prompt not in PROMPTS:
                raise ValueError(f"role {r.name}: unknown prompt {r.prompt!r}; known prompts: {sorted(PROMPTS)}")
            if "examples" in r.tools and rtype.kind != "junior":
                raise ValueError(f"role {r.name}: the examples tool is for juniors only (it starts their drafts)")
            if r.count > 1 and rtype.kind != "junior":
                raise ValueError(f"role {r.name}: count > 1 is only supported for juniors")
            if rtype.kind == "supervisor":
                pol = r.policy or "majority_vote"
                if pol not in POLICIES:
                    raise ValueError(f"role {r.name}: unknown policy {pol!r}; known policies: {sorted(POLICIES)}")
                if POLICIES[pol].needs_llm and not r.model:
                    raise ValueError(f"role {r.name}: policy {pol} needs `model:`")
                make_policy(pol, r.options)  # raises ValueError on bad options
            elif r.policy:
                raise ValueError(f"role {r.name}: `policy:` applies to supervisors only")
            try:
                rtype.Options.model_validate(r.options)
            except ValidationError as e:
                raise ValueError(f"role {r.name}: bad options: {e}") from None
        kinds = [ROLE_TYPES[r.type].kind for r in self.roles if r.enabled]
        for required in ("junior", "supervisor", "senior"):
            if required not in kinds:
                raise ValueError(f"the society needs at least one enabled {required} role")
        for k in ("supervisor", "senior"):
            if kinds.count(k) > 1:
                raise ValueError(f"only one enabled {k} role is supported")
        return self

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path | None = None) -> SocietyConfig:
        """Load and validate a YAML file (default :data:`DEFAULT_CONFIG`).

        Raises:
            ConfigError: the file is missing, a directory, unreadable, not UTF-8, not YAML, or fails
                validation (message names the file).
        """
        path = Path(path) if path is not None else DEFAULT_CONFIG
        if path.is_dir():
            raise ConfigError(f"config file {path} is a directory; pass --config pointing at a YAML file "
                              f"(see {CONFIG_DIR})")
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist; pass --config pointing at a YAML file (see {CONFIG_DIR})"
            )
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text ({e}); re-save it as UTF-8") from e
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read ({e.strerror or e}); check its permissions") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<dict>") -> SocietyConfig:
        """Validate a mapping (e.g. parsed YAML).

        Raises:
            ConfigError: naming ``source`` and each invalid field.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the top level must be a mapping with `models:` and `roles:`")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"{source}: invalid society config:\n{e}") from None

    def to_yaml(self) -> str:
        """The configuration as YAML (literal API keys are never written)."""
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)

    # ------------------------------------------------------------------ derived views

    def role(self, name: str) -> RoleConfig:
        """The role entry named ``name``.

        Raises:
            ConfigError: no such role.
        """
        for r in self.roles:
            if r.name == name:
                return r
        raise ConfigError(f"no role named {name!r}; roles: {[r.name for r in self.roles]}")

    def instances(self, kind: str | None = None) -> list[RoleInstance]:
        """Enabled role instances in config order (``count`` expanded), optionally of one kind
        (``junior``, ``supervisor``, ``senior``, ``reviewer``; see ``society.roles.Role.kind``)."""
        out: list[RoleInstance] = []
        for r in self.roles:
            if not r.enabled or (kind and ROLE_TYPES[r.type].kind != kind):
                continue
            for i in range(r.count):
                name = r.name if r.count == 1 else f"{r.name}_{i + 1}"
                sampling = r.sampling
                if r.count > 1 and sampling.seed is not None:
                    sampling = sampling.model_copy(update={"seed": sampling.seed + i})
                out.append(RoleInstance(name=name, config=r, sampling=sampling))
        return out

    def uses_llm(self, role: RoleConfig) -> bool:
        """Whether ``role`` calls its model (a supervisor only with an LLM policy such as ``llm``)."""
        rtype = ROLE_TYPES[role.type]
        if rtype.kind == "supervisor":
            return POLICIES[role.policy or "majority_vote"].needs_llm
        return rtype.needs_model

    def embedded_aliases(self) -> dict[str, str]:
        """Model alias -> embedded model name, for the embedded aliases bound to enabled roles
        (also a supervisor's whose policy may not call it: serving dedups by embedded model, so a
        shared model costs nothing extra, and a custom policy that does call it finds its endpoint)."""
        used = {r.model for r in self.roles if r.enabled and r.model}
        return {a: m.embedded for a, m in self.models.items() if a in used and m.embedded}

    def with_endpoint(self, alias: str, base_url: str, model: str, *, api_key: str | None = None,
                      extra_body: dict[str, Any] | None = None) -> SocietyConfig:
        """A copy where ``alias`` points at ``base_url`` / ``model`` (e.g. a LoRA-served junior model or
        Agent Lightning's ``resources['main_llm'].endpoint`` / ``.model``), sending ``extra_body``
        with every request.

        Raises:
            ConfigError: ``alias`` is not in ``models:``.
        """
        if alias not in self.models:
            raise ConfigError(f"model alias {alias!r} is not in the config's models ({sorted(self.models)})")
        models = dict(self.models)
        models[alias] = ModelSpec(base_url=base_url, model=model, api_key=api_key, extra_body=extra_body)
        return self.model_copy(update={"models": models})

    def with_endpoint_for_all(self, base_url: str, model: str, *, api_key: str | None = None) -> SocietyConfig:
        """A copy where every model alias points at one endpoint (e.g. a test server)."""
        cfg = self
        for alias in self.models:
            cfg = cfg.with_endpoint(alias, base_url, model, api_key=api_key)
        return cfg

    def with_role_options(self, name: str, **options: Any) -> SocietyConfig:
        """A copy where role ``name``'s ``options:`` get ``options`` set over them, validated as the role
        type's options (e.g. ``with_role_options("senior", trigger=["error", "empty", "disagree"])``:
        when the senior rewrites, see ``society.roles.Senior``).

        Raises:
            ConfigError: no role ``name``, or options its type refuses.
        """
        role = self.role(name)
        merged = {**role.options, **options}
        try:
            ROLE_TYPES[role.type].Options.model_validate(merged)
        except ValidationError as e:
            raise ConfigError(f"role {name}: bad options {options}: {e}") from None
        roles = [r.model_copy(update={"options": merged}) if r.name == name else r for r in self.roles]
        return self.model_copy(update={"roles": roles})

    def with_embedded(self, embedded: str) -> SocietyConfig:
        """A copy where every embedded alias serves ``embedded`` instead (the CLI's ``--model-alias``)."""
        models = {a: (ModelSpec(embedded=embedded) if m.embedded else m) for a, m in self.models.items()}
        return self.model_copy(update={"models": models})


class RoleInstance(BaseModel):
    """One running instance of a role: ``name`` (unique in the graph), its ``config`` entry and
    its effective ``sampling`` (seed offset for ``count > 1``)."""

    name: str
    config: RoleConfig
    sampling: Sampling

    @property
    def type(self) -> str:
        return self.config.type

    @property
    def kind(self) -> str:
        """Where the graph places it: ``junior``, ``supervisor``, ``senior`` or ``reviewer``."""
        return ROLE_TYPES[self.type].kind

    @property
    def label(self) -> str:
        """Run name of its LLM calls: ``junior:<persona>`` (``junior:<persona>:<i>`` with count > 1),
        ``supervisor``, ``senior``, ``reviewer:<kind>`` (e.g. ``reviewer:semantic``)."""
        kind = self.kind
        if kind == "junior":
            persona = self.config.persona or self.name
            return (
                f"junior:{persona}" if self.config.count == 1 else f"junior:{persona}:{self.name.rsplit('_', 1)[-1]}"
            )
        if kind == "reviewer":
            return f"reviewer:{self.type.removesuffix('_reviewer')}"
        return kind
