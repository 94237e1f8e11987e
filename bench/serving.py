"""Serving benchmark: start-up time, latency and decode speed of the embedded models.

For each embedded model: start a llama-cpp-python server (``society.models.serve_embedded``),
then send one chat request of about 60 prompt tokens (temperature 0, ``max_tokens`` completion
tokens) three times, with a different prompt in between so the second cold run really
recomputes the prompt. Prints, per model:

* start-up: seconds from process spawn until ``/v1/models`` answers (model load included);
* latency: wall seconds of one request (client side, HTTP included), cold (prompt evaluated)
  and warm (identical request again; llama.cpp reuses the KV cache of the common prefix);
* tokens/s: completion tokens / latency (client-side, so prompt processing is included);
* prompt/s and decode/s: llama.cpp's own timings for the last cold request, from the server log
  (``prompt eval time`` and ``eval time`` lines).

Also times a one-process, two-alias server (``LlamaServer.multi``) switching between the models.

Run: ``python3 bench/serving.py [--models smollm2-135m qwen2.5-coder-0.5b] [--max-tokens 64]``
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

# bench/society.py would shadow the `society` package when this file is run as a script
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from openai import OpenAI  # noqa: E402

from society.models import EMBEDDED_MODELS, LlamaServer, ServedModel, ensure_model, serve_embedded  # noqa: E402

SYSTEM = "You are an expert SQLite assistant. Answer with one SQL query and nothing else."
QUESTION = (
    "Database concert_singer has tables singer(Singer_ID, Name, Country, Song_Name, Age, Is_male) "
    "and concert(concert_ID, concert_Name, Theme, Stadium_ID, Year). "
    "How many singers are from France?"
)
OTHER = "Database pets has table Pets(PetID, PetType, pet_age, weight). What is the average weight of dogs?"


def _request(client: OpenAI, model: str, question: str, max_tokens: int) -> tuple[float, int, int, str]:
    t0 = time.perf_counter()
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        temperature=0,
        max_tokens=max_tokens,
    )
    dt = time.perf_counter() - t0
    return dt, r.usage.prompt_tokens, r.usage.completion_tokens, r.choices[0].message.content or ""


_TIMING = re.compile(r"(prompt eval time|\beval time) =\s*([\d.]+) ms /\s*(\d+) (?:tokens|runs)")


def _server_rates(log: str) -> tuple[float | None, float | None]:
    """Tokens/s of the last prompt-eval and eval lines in a llama.cpp log."""
    prompt = decode = None
    for kind, ms, n in _TIMING.findall(log):
        rate = int(n) / (float(ms) / 1000) if float(ms) > 0 else None
        if kind.startswith("prompt"):
            prompt = rate
        else:
            decode = rate
    return prompt, decode


def bench_model(alias: str, max_tokens: int) -> dict:
    ensure_model(alias)  # assembly is not part of start-up
    with serve_embedded(alias) as srv:
        client = OpenAI(base_url=srv.base_url, api_key="sk-no-key")
        _request(client, srv.model, OTHER, 4)  # first request pays one-time warm-up
        cold = []
        for _ in range(2):
            _request(client, srv.model, OTHER, 8)
            cold.append(_request(client, srv.model, QUESTION, max_tokens))
        prompt_rate, decode_rate = _server_rates(srv.log_text())
        warm = _request(client, srv.model, QUESTION, max_tokens)
        return {
            "alias": alias,
            "threads": f"{srv.n_threads}/{srv.n_threads_batch}",
            "startup_s": srv.startup_s,
            "prompt_tokens": cold[-1][1],
            "completion_tokens": cold[-1][2],
            "cold_s": statistics.median(c[0] for c in cold),
            "warm_s": warm[0],
            "tok_s": cold[-1][2] / cold[-1][0],
            "prompt_rate": prompt_rate,
            "decode_rate": decode_rate,
            "reply": cold[-1][3].strip().replace("\n", " ")[:80],
        }


def bench_multi(aliases: list[str]) -> dict:
    served = [ServedModel(a, ensure_model(a)) for a in aliases]
    with LlamaServer.multi(served) as srv:
        client = OpenAI(base_url=srv.base_url, api_key="sk-no-key")
        same, switch = [], []
        for a in aliases * 2:
            switch.append(_request(client, a, QUESTION, 8)[0])  # previous request used another alias
            same.append(_request(client, a, QUESTION, 8)[0])  # same alias again
        return {"startup_s": srv.startup_s, "same_s": statistics.median(same), "switch_s": statistics.median(switch)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"], choices=sorted(EMBEDDED_MODELS))
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--no-multi", action="store_true", help="skip the one-process multi-alias measurement")
    args = ap.parse_args()

    import os

    print(f"1-min load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(llama.cpp threads collapse when cores are shared; see society.models.default_threads)")
    print(f"{'model':<20} {'threads':>7} {'start s':>8} {'prompt tok':>10} {'compl tok':>9} {'cold s':>7} {'warm s':>7} "
          f"{'tok/s':>6} {'prompt tok/s':>12} {'decode tok/s':>12}  reply")
    for alias in args.models:
        r = bench_model(alias, args.max_tokens)
        fmt = lambda x: f"{x:.1f}" if x is not None else "-"  # noqa: E731
        print(f"{r['alias']:<20} {r['threads']:>7} {r['startup_s']:>8.2f} {r['prompt_tokens']:>10} {r['completion_tokens']:>9} "
              f"{r['cold_s']:>7.2f} {r['warm_s']:>7.2f} {r['tok_s']:>6.1f} {fmt(r['prompt_rate']):>12} "
              f"{fmt(r['decode_rate']):>12}  {r['reply']}")
    if not args.no_multi and len(args.models) > 1:
        m = bench_multi(args.models)
        print(f"\none process, aliases {args.models}: start {m['startup_s']:.2f} s; 8-token request "
              f"{m['same_s']:.2f} s on the loaded model vs {m['switch_s']:.2f} s when switching model")


if __name__ == "__main__":
    main()
