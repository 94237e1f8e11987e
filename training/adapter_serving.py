"""Serving checks of a trained adapter: llama.cpp serves base + LoRA, compared with transformers + PEFT.

================================  ==============================================================
function                          what it does
================================  ==============================================================
:func:`serve_adapter`             a :class:`society.llama_server.LlamaServer` serving base + adapter
:func:`check_served_equals_peft`  greedy output of the served adapter vs transformers + PEFT
                                  (:class:`ServingCheck`)
:func:`greedy_completion`         plain greedy completion from a running server
:func:`server_tokens`             the server's token ids for a text
:func:`transformers_serve_command` command line of the CPU fallback route (GPU: vLLM serves the
                                  PEFT adapters by name, :class:`society.vllm_serving.VLLMServer`)
================================  ==============================================================

Comparing served and trained models like with like: llama.cpp runs the base at its quantisation
(Q4 matmuls quantise activations to 8 bits too) and keeps its KV cache in F16, transformers runs
the dequantised float32 weights. :func:`training.checkpoints.dequantized_gguf` writes the *same*
dequantised weights as an F32 GGUF; served from it with an F32 KV cache
(:func:`check_served_equals_peft`), llama.cpp + the adapter reproduces transformers + PEFT greedily
token for token (SmolLM2 and Qwen2.5 checked in ``tests/test_export.py``). The quantised base +
adapter is what is served in production (agreement and speed in ``bench/lora_serving.py``). The
checks send ``repeat_penalty: 1`` so that "temperature 0" is plain greedy decoding whatever the
server's default.

GPU route: :class:`society.vllm_serving.VLLMServer` serves the PEFT adapters directly, by name
(``--enable-lora``, ``--lora-modules name=dir`` or hot-loaded), on the HF directory of
:func:`training.checkpoints.hf_checkpoint` (no GGUF export needed). Not run on a GPU here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from training.checkpoints import SMOLLM2_ALIAS, dequantized_gguf, load_for_training, resolve_gguf
from training.export import adapter_gguf
from training.threads import torch_threads

__all__ = [
    "serve_adapter",
    "ServingCheck",
    "check_served_equals_peft",
    "greedy_completion",
    "server_tokens",
    "transformers_serve_command",
]


def serve_adapter(
    adapter: str | os.PathLike[str],
    base_model: str | os.PathLike[str],
    *,
    model_alias: str,
    **server_kw: Any,
) -> Any:
    """A (not yet started) llama-server for ``base_model`` that serves the LoRA ``adapter`` under
    the name ``model_alias`` (and the plain base model as ``<model_alias>-base``).

    Args:
        adapter: a PEFT adapter directory (converted with :func:`export_lora_gguf` when its
            ``adapter.gguf`` is missing or older) or a GGUF LoRA file.
        base_model: alias or GGUF path of the base (the quantised production model, or the
            :func:`dequantized_gguf` copy for exact comparisons).
        model_alias: the adapter's name: ``srv.endpoint(model_alias)`` chooses it per request.
        **server_kw: :class:`society.llama_server.LlamaServer` settings (``n_ctx``, ``n_threads``...).

    Returns:
        ``society.llama_server.LlamaServer``; use ``with serve_adapter(...) as srv:``.

    Raises:
        FileNotFoundError: no adapter at ``adapter``.
    """
    from society.llama_server import LlamaServer, LoraAdapter

    return LlamaServer(resolve_gguf(base_model), model_alias=f"{model_alias}-base",
                       loras=[LoraAdapter(model_alias, adapter_gguf(adapter, base_model))], **server_kw)


@dataclass
class ServingCheck:
    """Greedy outputs of the same chat prompts from transformers+PEFT and from the llama.cpp server.

    Attributes:
        texts: the chat-templated prompt texts (transformers' rendering of the GGUF template).
        peft: transformers + PEFT greedy continuations (special tokens stripped).
        base: transformers greedy continuations with the adapter disabled.
        served: the server's greedy continuations (``/v1/completions``, temperature 0,
            ``repeat_penalty`` 1).
        prompt_tokens_equal: the server tokenised every prompt exactly as transformers did.
        served_seconds: wall seconds of the server requests; served_tokens: tokens they returned.
    """

    texts: list[str]
    peft: list[str]
    base: list[str]
    served: list[str]
    prompt_tokens_equal: bool
    served_seconds: float = 0.0
    served_tokens: int = 0

    @property
    def n_equal(self) -> int:
        """Prompts whose served continuation equals transformers+PEFT's exactly."""
        return sum(a == b for a, b in zip(self.peft, self.served))

    @property
    def adapter_changes_output(self) -> bool:
        """True when the adapter changed at least one greedy continuation."""
        return self.peft != self.base


def greedy_completion(server: Any, text: str, max_tokens: int, adapter: str | None = None) -> tuple[str, int]:
    """Plain greedy completion of ``text`` from a running :class:`society.llama_server.LlamaServer`
    (temperature 0, top_k 1, repeat_penalty 1), with ``adapter`` chosen by name (None: the base
    model); returns (text, completion tokens)."""
    payload: dict[str, Any] = {"model": server.model, "prompt": text, "max_tokens": max_tokens,
                               "temperature": 0.0, "top_k": 1, "repeat_penalty": 1.0}
    if server.adapters:
        payload["lora"] = server.lora_field(adapter)
    out = server.post("/v1/completions", payload)
    return out["choices"][0]["text"], int((out.get("usage") or {}).get("completion_tokens", 0))


def server_tokens(server: Any, text: str) -> list[int]:
    """Token ids the server's model gives ``text`` (llama-server ``/tokenize``, special tokens
    parsed, no BOS added)."""
    return list(server.post("/tokenize", {"content": text, "add_special": False, "parse_special": True})["tokens"])


def check_served_equals_peft(
    adapter_dir: str | os.PathLike[str],
    conversations: Sequence[Sequence[Mapping[str, str]]],
    *,
    base_model: str | os.PathLike[str] = SMOLLM2_ALIAS,
    served_base: str = "f32",
    max_tokens: int = 12,
    model_and_tokenizer: tuple[Any, Any] | None = None,
    **server_kw: Any,
) -> ServingCheck:
    """Serve ``adapter_dir`` with llama.cpp and compare its greedy output with transformers+PEFT.

    Args:
        adapter_dir: PEFT adapter trained on ``base_model``.
        conversations: chat prompts (lists of ``{"role", "content"}``); each is rendered with the
            tokenizer's chat template and a generation prompt, then completed by both sides.
        served_base: ``"f32"`` -- the server runs :func:`dequantized_gguf` (the very weights
            transformers runs) with an F32 KV cache (``-ctk f32 -ctv f32``; llama.cpp's
            default F16 cache alone moved Qwen2.5 logits by up to 15 under a strong random
            adapter), so greedy tokens should be identical; ``"gguf"`` -- the quantised
            production GGUF with the server's default settings (Q4 matmuls, F16 KV cache:
            agreement is approximate).
        max_tokens: new tokens per prompt.
        model_and_tokenizer: reuse an already loaded (model, tokenizer) from :func:`load_for_training`.
        **server_kw: :class:`society.llama_server.LlamaServer` settings.
    """
    import time as _time

    import torch
    from peft import PeftModel

    if served_base not in ("f32", "gguf"):
        raise ValueError(f"served_base must be 'f32' or 'gguf', got {served_base!r}")
    model, tok = model_and_tokenizer or load_for_training(base_model)
    texts = [tok.apply_chat_template([dict(m) for m in conv], add_generation_prompt=True, tokenize=False)
             for conv in conversations]
    pm = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    peft_out, base_out, hf_ids = [], [], []
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads())
    try:
        for text in texts:
            ids = tok(text, add_special_tokens=False, return_tensors="pt")
            n = ids["input_ids"].shape[1]
            with torch.no_grad():
                out = pm.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
                peft_out.append(tok.decode(out[0][n:], skip_special_tokens=True))
                with pm.disable_adapter():
                    b = pm.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
                base_out.append(tok.decode(b[0][n:], skip_special_tokens=True))
            hf_ids.append(ids["input_ids"][0].tolist())
    finally:
        pm.unload()
        torch.set_num_threads(prev_threads)
    base = dequantized_gguf(base_model) if served_base == "f32" else resolve_gguf(base_model)
    served, srv_ids = [], []
    server_kw.setdefault("n_ctx", 2048)
    if served_base == "f32":
        server_kw.setdefault("kv_cache_type", "f32")
        server_kw.setdefault("extra_args", ("-fa", "off"))  # flash attention reorders the sums (0.3 % of an effect)
    with serve_adapter(adapter_dir, base, model_alias="adapter_check", **server_kw) as srv:
        t0 = _time.perf_counter()
        n_tok = 0
        for text in texts:
            srv_ids.append(server_tokens(srv, text))
            s, k = greedy_completion(srv, text, max_tokens, adapter="adapter_check")
            served.append(s)
            n_tok += k
        secs = _time.perf_counter() - t0
    return ServingCheck(texts=texts, peft=peft_out, base=base_out, served=served,
                        prompt_tokens_equal=srv_ids == hf_ids, served_seconds=secs, served_tokens=n_tok)


def transformers_serve_command(
    model_dir: str | os.PathLike[str], *, port: int = 8000, host: str = "127.0.0.1"
) -> list[str]:
    """``transformers serve`` command line for a merged HF directory (CPU fallback route).

    Slower than llama.cpp on the CPU (float32 PyTorch matmuls, no quantisation); kept for bases
    llama.cpp cannot take an adapter for.
    """
    exe = shutil.which("transformers") or "transformers"
    return [exe, "serve", str(model_dir), "--host", host, "--port", str(port)]
