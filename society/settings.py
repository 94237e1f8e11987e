"""The settings a society configuration is made of, below the registries that validate them.

Models, sampling, prompts, role entries, limits, LLM client, schema, execution and baseline
settings (pydantic, extra keys refused) and :class:`ConfigError`. :mod:`society.config` assembles
them into :class:`~society.config.SocietyConfig`, which also checks the role types, policies and
prompts they name; modules below the roles (``society.llm``, serving) import from here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Directory of the shipped configuration files.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
#: The default configuration file (Qwen2.5-Coder-0.5B for every role).
DEFAULT_CONFIG = CONFIG_DIR / "society.yaml"
#: The smoke configuration (SmolLM2-135M, small limits) used by tests and benchmarks.
SMOKE_CONFIG = CONFIG_DIR / "smoke.yaml"


class ConfigError(ValueError):
    """Raised for an unusable configuration; the message names the file/field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def renamed_keys(data: Any, renames: Mapping[str, str], where: str) -> Any:
    """``data`` (a mapping about to be validated) with deprecated keys renamed, one
    ``DeprecationWarning`` per old key; both the old and the new key given is an error.

    For ``model_validator(mode="before")`` of settings whose fields were renamed.
    """
    if not isinstance(data, Mapping) or not any(k in data for k in renames):
        return data
    out = dict(data)
    for old, new in renames.items():
        if old not in out:
            continue
        if new in out:
            raise ValueError(f"{where}: give `{new}` only (`{old}` is its old name)")
        warnings.warn(f"{where}: `{old}` is deprecated; call it `{new}`", DeprecationWarning, stacklevel=2)
        out[new] = out.pop(old)
    return out


class ModelSpec(_Strict):
    """Where one model alias is served: an embedded GGUF or an OpenAI-compatible endpoint.

    Exactly one of ``embedded`` or ``base_url`` must be given.

    Attributes:
        embedded: an alias of ``society.models.EMBEDDED_MODELS`` (e.g. ``qwen2.5-coder-0.5b``,
            ``smollm2-135m``); the CLI serves it with llama.cpp's llama-server on a free loopback port.
        base_url: an OpenAI-compatible base URL ending in ``/v1`` (vLLM, Ollama, llama.cpp,
            a hosted API, or Agent Lightning's LLMProxy).
        model: the model name sent to ``base_url`` (required with ``base_url``).
        api_key_env: name of the environment variable holding the API key (optional; local
            servers accept any key).
        api_key: a literal key, for runtime overrides only (never written to run snapshots).
        extra_body: extra JSON fields sent with every request to ``base_url`` (e.g. llama-server's
            ``lora: [{id, scale}]`` choosing a LoRA adapter), or None.
    """

    embedded: str | None = None
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    api_key: str | None = Field(default=None, repr=False, exclude=True)
    extra_body: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if bool(self.embedded) == bool(self.base_url):
            raise ValueError("give exactly one of `embedded: <alias>` or `base_url: http://.../v1` (+ `model:`)")
        if self.base_url and not self.model:
            raise ValueError(f"`model:` is required with base_url {self.base_url}")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {self.base_url!r} must start with http:// or https://")
        return self

    def resolved_api_key(self) -> str:
        """The API key: ``api_key``, else ``$api_key_env``, else ``"sk-no-key"`` (local servers ignore it).

        Raises:
            ConfigError: ``api_key_env`` is named but unset.
        """
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            val = os.environ.get(self.api_key_env)
            if not val:
                raise ConfigError(f"environment variable {self.api_key_env} (api_key_env) is not set; export it")
            return val
        return "sk-no-key"


class Sampling(_Strict):
    """Sampling settings sent with every request of a role.

    Attributes:
        temperature: in [0, 2]; 0 is greedy.
        max_tokens: completion token cap, in [1, 8192].
        seed: request seed (llama.cpp and vLLM honour it); with ``count > 1`` instance ``i`` uses ``seed + i``.
        top_p: nucleus sampling in (0, 1], or None for the server default.
        stop: strings that end the completion (not included in it), e.g. ``["</sql>", "```\\n\\n"]``
            so a model stops after its query instead of explaining it (saves generation time).
    """

    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=256, ge=1, le=8192)
    seed: int | None = None
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: list[str] | None = None


class PromptSpec(_Strict):
    """An inline prompt template: ``system`` and ``user`` strings with ``{placeholders}``
    (``{question}``, ``{schema}``, ``{sql}``, ``{execution}``, ``{feedback}``, ``{candidates}``;
    write literal braces as ``{{`` ``}}``)."""

    system: str
    user: str


class RoleConfig(_Strict):
    """One role entry of the ``roles:`` list.

    Attributes:
        name: instance name (unique), e.g. ``junior_direct``; used in node names, run names and metadata.
        type: role type, a key of ``society.roles.ROLE_TYPES`` (``junior``, ``supervisor``, ``senior``,
            ``execution_reviewer``, ``semantic_reviewer``).
        model: a key of ``models:`` (required by roles that call an LLM).
        persona: the junior's strategy name (``direct``, ``step_by_step``, ``decompose`` or any new one).
        prompt: a template name from ``society.prompts.PROMPTS`` or an inline ``{system, user}``;
            None uses the role type's default.
        sampling: see :class:`Sampling`.
        count: how many instances of this role to run (juniors only; >1 adds ``_1``, ``_2`` suffixes).
        policy: the supervisor's policy name (``society.policies.POLICIES``).
        tools: tools the role may use: ``schema``, ``executor``, ``examples`` (a junior's prompt
            then starts with worked examples of similar questions: ``society.toolkit.sql_examples``),
            ``web_search`` (web search is present only when ``TAVILY_API_KEY`` is set).
        options: role-type options, validated by the role type's ``Options`` model.
        enabled: False drops the role without deleting it.
    """

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    type: str
    model: str | None = None
    persona: str | None = None
    prompt: str | PromptSpec | None = None
    sampling: Sampling = Field(default_factory=Sampling)
    count: int = Field(default=1, ge=1, le=16)
    policy: str | None = None
    tools: list[str] = Field(default_factory=lambda: ["schema", "executor"])
    options: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, v: list[str]) -> list[str]:
        known = {"schema", "executor", "examples", "web_search"}
        bad = [t for t in v if t not in known]
        if bad:
            raise ValueError(f"unknown tools {bad}; known tools: {sorted(known)}")
        return v


class Limits(_Strict):
    """Run limits.

    Attributes:
        max_review_rounds: review rounds per question (>= 1; the global turn limit); reaching it
            ends the run with the best SQL so far. Old name ``max_turns`` (deprecated, still read).
        max_junior_rounds: how many times juniors may draft (1 + CRITICAL restarts).
        recursion_limit: LangGraph's super-step limit (a safety net above ``max_review_rounds``).
    """

    max_review_rounds: int = Field(default=2, ge=1, le=50)
    max_junior_rounds: int = Field(default=2, ge=1, le=10)
    recursion_limit: int = Field(default=100, ge=10, le=10_000)

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        return renamed_keys(data, {"max_turns": "max_review_rounds"}, "limits")


class LLMSettings(_Strict):
    """Client settings for every LLM call.

    Attributes:
        timeout_s: per-request timeout in seconds (includes queueing on a busy local server).
        retries: retries after the first failed attempt (connection error, timeout, HTTP 5xx/429).
        backoff_s: first backoff delay in seconds; doubles each retry, capped at ``backoff_max_s``.
        backoff_max_s: the largest delay between attempts.
    """

    timeout_s: float = Field(default=180.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    backoff_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=8.0, ge=0)


class SchemaSettings(_Strict):
    """How the schema is shown in prompts (``tools.schema.schema_prompt``): ``compact`` one-line
    CREATE TABLE per table (else as stored); ``sample_rows`` example rows per table (0-5);
    ``max_chars`` character budget (the text shrinks, then drops trailing tables, to fit; None = no cap)."""

    compact: bool = True
    sample_rows: int = Field(default=0, ge=0, le=5)
    max_chars: int | None = Field(default=3000, ge=200)


class ExecutionSettings(_Strict):
    """Safe-executor limits for every tool call: ``timeout_s`` seconds per statement, ``max_rows`` rows
    kept; ``error_hints``: a ``no such column`` / ``no such table`` error shown to a role carries what
    the schema knows about that name (:func:`tools.error_hints.name_hint`: the alias's table and its
    columns, the tables that have the column, close spellings)."""

    timeout_s: float = Field(default=5.0, gt=0)
    max_rows: int = Field(default=10_000, ge=1)
    error_hints: bool = False


class BaselineSettings(_Strict):
    """The single-agent baselines (``single``, ``write-check-rewrite``) reuse role bindings so the
    comparison uses the same model: ``writer`` drafts (a junior role name), ``refiner`` checks and
    rewrites (a senior role name), for at most ``max_rewrites`` rewrites (old name ``max_turns``);
    ``check`` is the refiner's check in the baseline (``llm`` as in Agent Lightning's example,
    whatever the society's senior uses)."""

    writer: str = "junior_direct"
    refiner: str = "senior"
    max_rewrites: int = Field(default=3, ge=1, le=20)
    check: Literal["llm", "execution"] = "llm"

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        return renamed_keys(data, {"max_turns": "max_rewrites"}, "baselines")
