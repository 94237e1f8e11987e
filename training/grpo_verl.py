"""Phase 3 on a GPU: GRPO of the senior through Agent Lightning's VERL (``backend="verl"``).

Agent Lightning's ``VERL`` algorithm (GRPO advantage estimator, vLLM rollouts, FSDP full-parameter
actor: see :func:`refuse_adapter_rollouts` for why not LoRA, and :class:`ServedPolicyGuard` for the
check) drives the *whole society* as the LitAgent, and ``agent_match`` keeps only the senior's LLM
calls as training transitions; its settings are ``configs/verl_senior.yaml``
(:data:`training.grpo.DEFAULT_VERL_CONFIG`). Not run on the CPU build machine; what runs before Ray
starts (:func:`build_senior_verl`) and the config against verl's own are checked there by
``tests/test_verl_config.py``. :func:`training.run_plan.resolve_backend` picks TRL or VERL for
``grpo.backend``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.grpo import DEFAULT_VERL_CONFIG, SeniorGRPOConfig

logger = logging.getLogger(__name__)

def load_verl_config(
    path: str | Path | None = None,
    *,
    model_path: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The VERL override dict for ``agl.VERL(config)`` from a YAML file.

    Args:
        path: YAML (default ``configs/verl_senior.yaml``); its keys mirror VERL's
            ``ppo_trainer`` config (``algorithm``, ``data``, ``actor_rollout_ref``, ``trainer``) and
            are merged over Agent Lightning's packaged defaults by ``agl.VERL``.
        model_path: sets ``actor_rollout_ref.model.path`` (a HF directory; use
            :func:`training.checkpoints.hf_checkpoint` to get one from the embedded GGUF).
        overrides: nested dict merged last.

    Raises:
        FileNotFoundError / ValueError: missing file, or a file whose top level is not a mapping,
            or whose ``algorithm.adv_estimator`` is not ``grpo``.
    """
    import yaml

    p = Path(path) if path is not None else DEFAULT_VERL_CONFIG
    if not p.is_file():
        raise FileNotFoundError(f"VERL config {p} does not exist; copy {DEFAULT_VERL_CONFIG}")
    cfg = yaml.safe_load(p.read_text()) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{p}: the top level must be a mapping of VERL config sections")

    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        for k, v in b.items():
            a[k] = merge(dict(a.get(k) or {}), v) if isinstance(v, dict) else v
        return a

    if model_path is not None:
        merge(cfg, {"actor_rollout_ref": {"model": {"path": str(model_path)}}})
    if overrides:
        merge(cfg, overrides)
    if (cfg.get("algorithm") or {}).get("adv_estimator") != "grpo":
        raise ValueError(
            f"{p}: algorithm.adv_estimator must be 'grpo' for the senior (got "
            f"{(cfg.get('algorithm') or {}).get('adv_estimator')!r})"
        )
    return cfg


def bind_policy_resource(resources: Any, senior_alias: str) -> dict[str, Any]:
    """Resources with VERL's served policy (``main_llm``) also named ``senior_alias``, so the
    society's senior calls the model being trained; unchanged when there is no ``main_llm``."""
    res = dict(resources or {})
    if "main_llm" in res:
        res[senior_alias] = res["main_llm"]
    return res


def senior_verl_agent(
    society_config: Any,
    *,
    senior_alias: str,
    endpoints: dict[str, tuple[str, str]] | None = None,
    reward: Any = None,
) -> Any:
    """The LitAgent of the VERL path: ``training.agent.SocietyAgent`` with VERL's policy model
    bound to the senior's alias.

    VERL publishes the model it is training as the ``main_llm`` resource (an OpenAI endpoint in
    front of its vLLM workers); the society reads one ``agl.LLM`` resource per model alias, so the
    senior alias is mapped to ``main_llm`` while the juniors/supervisor keep their own servers
    (``endpoints``).
    """
    from training.agent import SocietyAgent

    class SeniorVERLAgent(SocietyAgent):
        def rollout(self, task, resources, rollout):  # noqa: ANN001
            return super().rollout(task, bind_policy_resource(resources, senior_alias), rollout)

    return SeniorVERLAgent(society_config, endpoints=endpoints, reward=reward)


def senior_verl_adapter(agent_match: str | None) -> Any:
    """The trace adapter of the VERL path: Agent Lightning's ``TracerTraceToTriplet`` that keeps
    only the LLM calls made inside agent spans whose name matches ``agent_match`` (a regex; the
    society's LangGraph nodes are the agent spans, so ``"senior"`` keeps ``senior_rewrite`` /
    ``senior_check``; None keeps every call) -- what ``agl.Trainer(adapter={"agent_match": ...})``
    builds. VERL's daemon calls ``adapter.adapt(spans)`` on each finished rollout's spans."""
    from agentlightning.adapter import TracerTraceToTriplet

    return TracerTraceToTriplet(agent_match=agent_match)


# ---------------------------------------------------------------- VERL: rollouts from the policy being trained

#: The fixed prompt whose log-probs under the served policy :class:`ServedPolicyGuard` compares across weight
#: syncs (a senior-style rewrite request; any fixed text works, it only has to stay the same).
SYNC_PROBE_PROMPT = (
    "Rewrite the SQL so that it answers the question.\nQuestion: How many singers are older than 30?\n"
    "SQL: SELECT count(*) FROM singer WHERE age > 30"
)


class PolicyNotSyncedError(RuntimeError):
    """The policy the rollouts are sampled from did not change after a weight sync that followed an
    update of the trained policy: training would go on while every rollout comes from old weights."""


def refuse_adapter_rollouts(cfg: dict[str, Any]) -> None:
    """Refuse a VERL config that would train a LoRA adapter the rollouts never use.

    Agent Lightning 0.3.0's daemon samples every rollout through vLLM's OpenAI server, naming the
    model by ``actor_rollout_ref.model.path`` (``agentlightning/verl/trainer.py``, ``fit``); verl
    0.6.1 gives the adapter to the engine only (``vllm_rollout_spmd.py``: ``add_lora`` under a
    numeric name; ``vllm_async_server.py``: a ``LoRARequest`` only inside its own ``generate``),
    so with ``lora_rank > 0`` the OpenAI requests are answered by the base weights while the adapter
    trains. The GPU path therefore trains the senior with all its parameters (``lora_rank: 0``).

    Raises:
        ValueError: ``actor_rollout_ref.model.lora_rank`` > 0 or ``lora_adapter_path`` is set.

    >>> refuse_adapter_rollouts({"actor_rollout_ref": {"model": {"lora_rank": 0}}})
    >>> refuse_adapter_rollouts({"actor_rollout_ref": {"model": {"lora_rank": 32}}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: actor_rollout_ref.model.lora_rank = 32: Agent Lightning 0.3 samples rollouts ...
    """
    model = (cfg.get("actor_rollout_ref") or {}).get("model") or {}
    rank, adapter = int(model.get("lora_rank") or 0), model.get("lora_adapter_path")
    if rank > 0 or adapter:
        what = f"lora_rank = {rank}" if rank > 0 else f"lora_adapter_path = {adapter!r}"
        raise ValueError(
            f"actor_rollout_ref.model.{what}: Agent Lightning 0.3 samples rollouts through vLLM's OpenAI server "
            "under the base model's name and verl 0.6.1 attaches a LoRA adapter only inside its own generate(), "
            "so the rollouts would come from the base weights while the adapter trains; set "
            "actor_rollout_ref.model.lora_rank: 0 (full-parameter training of the senior, configs/verl_senior.yaml)"
        )


def completion_prompt_logprobs(body: dict[str, Any]) -> list[float]:
    """The prompt tokens' log-probs (natural log, one per token after the first, each <= 0) from an
    OpenAI ``/v1/completions`` answer to ``echo: true, logprobs: 0, max_tokens: 1`` (vLLM's
    shape: ``choices[0].logprobs.token_logprobs`` = prompt tokens, the first ``None``, then the one
    generated token, which is dropped).

    Raises:
        ValueError: the answer carries no prompt log-probs (a server without ``echo`` support).

    >>> completion_prompt_logprobs({"choices": [{"logprobs": {"token_logprobs": [None, -1.5, -0.25, -3.0]}}]})
    [-1.5, -0.25]
    """
    try:
        values = body["choices"][0]["logprobs"]["token_logprobs"]
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"no prompt log-probs in the completion answer ({type(e).__name__}: {e})") from e
    prompt = [float(v) for v in (values or [])[:-1] if v is not None]
    if not prompt:
        raise ValueError("the completion answer has no prompt log-probs (does the server support echo?)")
    return prompt


def openai_prompt_logprobs(base_url: str, model: str, prompt: str, *, timeout_s: float = 60.0) -> list[float]:
    """Log-probs of ``prompt``'s tokens under the policy an OpenAI-compatible server (vLLM) serves as
    ``model``: one ``POST {base_url}/completions`` with ``echo``, ``logprobs: 0``, ``max_tokens: 1``,
    ``temperature: 0`` (see :func:`completion_prompt_logprobs`). Not run here: no vLLM on the CPU
    machine (its answer's shape is taken from vLLM's OpenAI completions API).

    Raises:
        requests.HTTPError / requests.ConnectionError: the server did not answer with 2xx.
        ValueError: the answer has no prompt log-probs.
    """
    import requests

    r = requests.post(f"{base_url.rstrip('/')}/completions", timeout=timeout_s, json={
        "model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 0})
    r.raise_for_status()
    return completion_prompt_logprobs(r.json())


def logprob_shift(before: Sequence[float], after: Sequence[float]) -> float:
    """The largest absolute change of a token's log-prob between two probes of the same prompt
    (nats, >= 0; 0.0 means the served policy gave bit-identical log-probs).

    Raises:
        ValueError: the probes are empty or of different lengths (different prompts or tokenisers).

    >>> logprob_shift([-1.0, -2.0], [-1.0, -2.5])
    0.5
    >>> logprob_shift([-1.0, -2.0], [-1.0, -2.0])
    0.0
    """
    if not before or len(before) != len(after):
        raise ValueError(f"log-prob probes of {len(before)} and {len(after)} tokens: not the same prompt")
    return max(abs(float(a) - float(b)) for a, b in zip(before, after))


class ServedPolicyGuard:
    """Refuses to go on when the served policy did not change after a weight sync that followed an
    update (:class:`PolicyNotSyncedError`): the silent case of training one set of weights while
    the rollouts come from another.

    ``probe()`` returns the log-probs of a fixed prompt under the policy the rollouts are sampled
    from (on the GPU path :func:`openai_prompt_logprobs` against VERL's vLLM server). The trainer
    calls :meth:`note_update` after each optimiser step and :meth:`after_sync` after each weight
    sync (:meth:`wrap` does the latter around a ``wake_up``). A sync with no update since the last
    probe only sets the reference; after an update the probe must differ from it by more than
    ``min_shift`` nats (default 0: any change passes, only bit-identical log-probs are refused -- a
    sync that reached the server changes at least some logits; a sync that was dropped changes none,
    as long as the server answers one fixed request deterministically).

    Attributes:
        shifts: ``logprob_shift`` of each checked sync, in order.
    """

    def __init__(self, probe: Any, *, min_shift: float = 0.0) -> None:
        if min_shift < 0:
            raise ValueError(f"min_shift = {min_shift}: must be >= 0 (nats)")
        self.probe, self.min_shift = probe, float(min_shift)
        self.shifts: list[float] = []
        self._reference: list[float] | None = None
        self._updates = 0

    def note_update(self) -> None:
        """The trained policy took an optimiser step (its weights changed since the last sync)."""
        self._updates += 1

    def after_sync(self) -> float | None:
        """Probe the served policy after a weight sync; the shift since the reference, or None when
        no update came between (the probe becomes the new reference).

        Raises:
            PolicyNotSyncedError: an update came between and the shift is <= ``min_shift``.
        """
        now = list(self.probe())
        updates, self._updates = self._updates, 0
        shift = None
        if self._reference is not None and updates:
            shift = logprob_shift(self._reference, now)
            self.shifts.append(shift)
            if shift <= self.min_shift:
                raise PolicyNotSyncedError(
                    f"after {updates} update(s) of the trained policy and a weight sync, the served policy's "
                    f"log-probs of a fixed prompt moved by {shift:.3g} nats (<= {self.min_shift:g}): the rollouts "
                    "are not sampled from the weights being trained (a LoRA adapter the server does not apply, or "
                    "a sync that did not reach it); stopping instead of training on them"
                )
        self._reference = now
        return shift

    def wrap(self, wake_up: Any) -> Any:
        """``wake_up`` (a weight sync: verl's ``AgentLoopManager.wake_up``) followed by :meth:`after_sync`."""

        def synced(*args: Any, **kwargs: Any) -> Any:
            out = wake_up(*args, **kwargs)
            self.after_sync()
            return out

        return synced


def sync_checked_trainer_cls(prompt: str = SYNC_PROBE_PROMPT, *, min_shift: float = 0.0) -> type:
    """Agent Lightning's ``AgentLightningTrainer`` with a :class:`ServedPolicyGuard`: after every
    ``async_rollout_manager.wake_up()`` (verl 0.6.1 syncs the actor's weights into its vLLM servers
    there) the first server is probed with ``prompt`` under the model name Agent Lightning's
    rollouts use (``actor_rollout_ref.model.path``), and each ``_train_step`` counts as an update.
    Given to ``agl.VERL(config, trainer_cls=...)`` by :func:`build_senior_verl`.

    Raises:
        ImportError: agentlightning's VERL integration cannot import (verl, ray, ... missing).
    """
    from agentlightning.verl.trainer import AgentLightningTrainer

    class SyncCheckedTrainer(AgentLightningTrainer):
        """``AgentLightningTrainer`` that stops when the served policy did not follow the trained one."""

        def fit(self) -> Any:
            manager, model = self.async_rollout_manager, str(self.config.actor_rollout_ref.model.path)

            def probe() -> list[float]:
                return openai_prompt_logprobs(f"http://{manager.server_addresses[0]}/v1", model, prompt)

            self.policy_guard = ServedPolicyGuard(probe, min_shift=min_shift)
            manager.wake_up = self.policy_guard.wrap(manager.wake_up)
            return super().fit()

        def _train_step(self, batch_dict: dict) -> dict:
            out = super()._train_step(batch_dict)
            self.policy_guard.note_update()
            return out

    return SyncCheckedTrainer


def verl_trained_model(checkpoint_dir: str | Path) -> Path:
    """The trained senior as a Hugging Face model directory: ``global_step_<N>/actor/huggingface`` of
    the highest ``N`` under ``checkpoint_dir`` (verl 0.6's FSDP checkpoint layout, ``trainer.
    default_local_dir``) that holds weights -- verl writes them there only when
    ``actor.checkpoint.save_contents`` includes ``hf_model`` (``configs/verl_senior.yaml`` does);
    otherwise that directory has only the config and tokenizer.

    Raises:
        FileNotFoundError: no step directory with Hugging Face weights (``*.safetensors`` or
            ``pytorch_model*.bin``) under ``checkpoint_dir``; the message says what was found.
    """
    import re

    root = Path(checkpoint_dir)
    steps = []
    for d in root.glob("global_step_*/actor/huggingface"):
        m = re.fullmatch(r"global_step_(\d+)", d.parent.parent.name)
        if m and (d / "config.json").is_file():
            steps.append((int(m.group(1)), d))
    with_weights = [(n, d) for n, d in sorted(steps)
                    if any(d.glob("*.safetensors")) or any(d.glob("pytorch_model*.bin"))]
    if not with_weights:
        seen = ", ".join(str(d) for _, d in sorted(steps)) or "no global_step_*/actor/huggingface directory"
        raise FileNotFoundError(
            f"no trained senior with Hugging Face weights under {root} ({seen}); verl saves them only with "
            "actor_rollout_ref.actor.checkpoint.save_contents including hf_model (configs/verl_senior.yaml)"
        )
    return with_weights[-1][1]


def build_senior_verl(
    config: SeniorGRPOConfig,
    *,
    model_path: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything :func:`train_senior_verl` gives ``agl.Trainer``, built without starting Ray or
    touching CUDA (``agl.VERL`` composes its config when constructed; Ray starts in ``fit``).

    Returns ``agl.Trainer`` keyword arguments: ``algorithm`` (``agl.VERL`` on
    :func:`load_verl_config` of ``config.verl_config``, with :func:`sync_checked_trainer_cls` as its
    trainer: it stops when the served policy does not follow the trained one), ``adapter``
    (:func:`senior_verl_adapter` of ``config.agent_match``), ``tracer``
    (``training.agent.StoreTracer``: spans reach the store through its span processor -- with the
    client-server strategy the plain ``AgentOpsTracer`` exports over OTLP and loses them, see its
    docstring -- and carry the role/node attributes) and ``n_runners``.

    Args:
        model_path: the policy's HF directory; None -> :func:`training.checkpoints.hf_checkpoint` of
            ``config.model`` (dequantises the embedded GGUF once).
        overrides: nested VERL config keys merged over the YAML.

    Raises:
        ImportError: agentlightning's VERL integration cannot import (verl, ray, ... missing or
            of a version it does not support).
        ValueError: the config trains a LoRA adapter (:func:`refuse_adapter_rollouts`).
    """
    import agentlightning as agl

    from training.agent import StoreTracer

    if model_path is None:
        from training.checkpoints import hf_checkpoint

        model_path = str(hf_checkpoint(config.model))
    cfg = load_verl_config(config.verl_config, model_path=model_path, overrides=overrides)
    refuse_adapter_rollouts(cfg)
    return {
        "algorithm": agl.VERL(cfg, trainer_cls=sync_checked_trainer_cls()),
        "adapter": senior_verl_adapter(config.agent_match),
        "tracer": StoreTracer(),
        "n_runners": config.n_runners,
    }


def train_senior_verl(  # pragma: no cover - needs a GPU, verl and vLLM
    society_config: Any,
    train_tasks: list[dict[str, Any]],
    val_tasks: list[dict[str, Any]] | None,
    config: SeniorGRPOConfig,
    *,
    endpoints: dict[str, tuple[str, ...]] | None = None,
    reward_config: Any = None,
    overrides: dict[str, Any] | None = None,
) -> None:
    """GRPO of the senior with Agent Lightning's VERL algorithm (GPU).

    Args:
        society_config: the society config whose senior uses ``config.senior_alias``.
        train_tasks / val_tasks: Spider tasks (``training.agent.task_from_example``).
        config: ``verl_config`` (YAML), ``agent_match`` (regex on agent/node names whose LLM calls
            become training transitions: the senior's ``senior_check`` / ``senior_rewrite``),
            ``n_runners`` and ``model``.
        endpoints: alias -> (base_url, model[, api_key]) for the other roles' servers.
        overrides: nested VERL config keys merged over the YAML (e.g. ``trainer.default_local_dir``).

    The policy weights come from :func:`training.checkpoints.hf_checkpoint` (the embedded GGUF,
    dequantised), so no hub download is needed. All of the senior's parameters are trained
    (``lora_rank: 0``, :func:`refuse_adapter_rollouts`); checkpoints, with the full Hugging Face model
    (``save_contents`` includes ``hf_model``), go where ``trainer.default_local_dir`` says.
    The part before Ray starts is :func:`build_senior_verl` (checked on the CPU by
    ``tests/test_verl_config.py``).
    """
    import agentlightning as agl

    parts = build_senior_verl(config, overrides=overrides)
    agent = senior_verl_agent(
        society_config, senior_alias=config.senior_alias, endpoints=endpoints, reward=reward_config
    )
    trainer = agl.Trainer(**parts)
    trainer.fit(agent, train_dataset=train_tasks, val_dataset=val_tasks)
