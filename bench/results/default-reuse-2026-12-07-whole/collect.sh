#!/usr/bin/env bash
# collect RUN_DIR DEST: the committable record of a finished run (no store, no weights, no GGUF)
set -euo pipefail
src=$1 dst=$2
mkdir -p "$dst"
cd "$src"
find . -type f \
  ! -name 'store.sqlite*' ! -name 'responses.sqlite*' ! -name '*.gguf' ! -name 'adapter_model.safetensors' ! -name '*.lock' \
  ! -path '*/checkpoint-*' ! -name '*.log' ! -name 'sft_dataset.jsonl' ! -name 'metrics.jsonl' \
  ! -name 'optimizer.pt' ! -name 'scheduler.pt' ! -name 'rng_state.pth' ! -name 'training_args.bin' \
  ! -name 'tokenizer*' ! -name 'vocab.json' ! -name 'merges.txt' ! -name 'chat_template*' ! -name 'special_tokens_map.json' \
  -print | while read -r f; do
    case $f in *.jsonl) [ -f "${f%.jsonl}.reused.json" ] && continue;; esac  # reused: committed with its source run
    mkdir -p "$dst/$(dirname "$f")"
    if [[ $f == *.jsonl && $(stat -c %s "$f") -gt 20000 ]]; then xz -9c "$f" > "$dst/$f.xz"; else cp "$f" "$dst/$f"; fi
done
mv "$dst/config.yaml" "$dst/profile.yaml" 2>/dev/null || true
[ -f "$src/phases/2-sft/sft_dataset.jsonl" ] && sha256sum "$src/phases/2-sft/sft_dataset.jsonl" | sed "s#$src/##" > "$dst/phases/2-sft/sft_dataset.sha256"
du -sh "$dst"; find "$dst" -type f | wc -l
cp "$src/train.log" "$dst/train.log"
# the run's own lines (no progress bars, no per-step loss dicts)
tr '\r' '\n' < "$src.log" | grep -v "it/s\]\|s/it\]\|examples/s\]\|ba/s\]\|━\|^{'\|Warning\|warnings.warn\|^\s*$" > "$dst/run-output.txt" || true
# when each record was written (UTC, file modification times), as the earlier reuse run's timeline.txt
( cd "$src" && find . -type f ! -name 'store.sqlite*' ! -name '*.lock' ! -path '*/checkpoint-*' \
    \( -name 'done.json' -o -name '*.summary.json' -o -name 'sft_metrics.json' -o -name '*_done.json' -o -name 'grpo_metrics.json' \
       -o -name 'adapter.gguf' -o -name 'config.yaml' -o -name 'report.md' -o -name 'train_summary.json' -o -name 'prefilter*.json' \) \
    -printf '%TT %p\n' | sed 's/\.[0-9]* / /; s# \./# #' | sort > "$dst/timeline.txt" )
