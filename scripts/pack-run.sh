#!/usr/bin/env bash
# Pack a stopped training run directory into a small folder that can be committed, and unpack it
# again, so that a run longer than one sitting continues on another (fresh) machine.
#
#   scripts/pack-run.sh pack   RUN_DIR PACK_DIR [--untrained]   # RUN_DIR must not be running
#   scripts/pack-run.sh unpack PACK_DIR RUN_DIR   # then: sqlsociety train --resume RUN_DIR
#
# --untrained packs only what the untrained model made: phase 1 (its store, phases/1-*, its metrics
# rows) and the untrained stages (eval/baseline*, eval/roles/{juniors_baseline,juniors_baseline_repeat,
# senior_baseline,single_baseline}*); the trained phases' adapters (tens of MB) and every stage after
# them are left out, so a run resumed from the pack trains and judges them again (nothing of one
# training is mixed with another's). Use it while phase 1 is finished and the store holds nothing
# of later phases (phases 2 and 4 add no rollouts; phase 3 does: pack before it starts). A run in
# use may be packed this way while phase 1 is finished and phase 3 has not begun: nothing then
# writes its store, and SQLite's VACUUM INTO copies what the last transaction committed.
#
# pack: the rollout store is checkpointed (WAL), copied with SQLite's VACUUM INTO, checked with
# PRAGMA integrity_check and compressed with xz -9 (a 217 MB phase-1 store becomes ~6 MB); the
# per-rollout metrics are compressed too; everything else is copied as it is -- config.yaml,
# eval/ (per-question records and summaries), phases/ (done.json files, trained PEFT adapters,
# the bandit policy, replays), reports -- except what is rebuilt or useless elsewhere: GGUF
# exports of adapters (re-exported from the PEFT adapter when a server needs one), trainer
# checkpoint-*/ folders, lock files and server logs. stopped.json records when, at which commit,
# and the store's rollouts by status. Nothing in RUN_DIR is changed except the WAL checkpoint.
set -euo pipefail

die() { echo "pack-run: $*" >&2; exit 2; }
untrained=0
if [ $# -eq 4 ] && [ "$1" = pack ] && [ "$4" = --untrained ]; then untrained=1; set -- "$1" "$2" "$3"; fi
[ $# -eq 3 ] || die "usage: $0 pack RUN_DIR PACK_DIR [--untrained] | unpack PACK_DIR RUN_DIR"
mode=$1 src=$(realpath -m "$2") dst=$(realpath -m "$3")

case "$mode" in
pack)
    [ -f "$src/config.yaml" ] || die "$src has no config.yaml: not a run directory made by sqlsociety train"
    [ -f "$src/store.sqlite" ] || die "$src has no store.sqlite: nothing to pack"
    pid=$(cat "$src/store.sqlite.lock" 2>/dev/null || true)
    cmd=$( { [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null || true)
    live=0
    if [[ $cmd == *society.cli* || $cmd == *sqlsociety* ]]; then  # the lock file's pid is a live training run
        if [ "$untrained" = 1 ] && [ -f "$src/phases/1-gather/done.json" ] && ! compgen -G "$src/phases/3-*" > /dev/null
        then
            live=1
            echo "pack-run: $src is in use by process $pid, between phase 1 and phase 3: its store is not written; packing the untrained part" >&2
        else
            die "$src is in use by process $pid; stop the run (Ctrl-C or kill -INT $pid) and wait for it to exit (--untrained packs a live run between phases 1 and 3)"
        fi
    fi
    [ -e "$dst/store.sqlite.xz" ] && die "$dst already holds a packed store; choose another PACK_DIR"
    mkdir -p "$dst"
    python3 - "$src/store.sqlite" "$dst/store.sqlite" "$live" <<'EOF'
import sqlite3, sys
src, dst, live = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
con = sqlite3.connect(src)
if not live:  # a live run's connections keep their WAL; VACUUM INTO reads through it
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
con.execute("VACUUM INTO ?", (dst,))
con.close()
out = sqlite3.connect(dst)
ok = out.execute("PRAGMA integrity_check").fetchone()[0]
if ok != "ok":
    sys.exit(f"pack-run: the copied store fails integrity_check: {ok}")
EOF
    xz -T2 -9 "$dst/store.sqlite"
    if [ "$untrained" = 1 ] && [ -f "$src/metrics.jsonl" ]; then  # phase 1's metrics rows only
        python3 -c 'import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    try:
        row = json.loads(line)
    except ValueError:
        continue
    if str(row.get("phase", "")).startswith("1-"):
        sys.stdout.write(line)' "$src/metrics.jsonl" | xz -T2 -9 -c > "$dst/metrics.jsonl.xz"
    elif [ -f "$src/metrics.jsonl" ]; then
        xz -T2 -9 -c "$src/metrics.jsonl" > "$dst/metrics.jsonl.xz"
    fi
    # the response cache (eval/responses.sqlite) only saves model calls: left out, a resumed run asks again
    tar -C "$src" -cf - --exclude='./store.sqlite*' --exclude='./eval/responses.sqlite*' --exclude='./metrics.jsonl' \
        --exclude='*.gguf' \
        --exclude='checkpoint-*' --exclude='*.lock' --exclude='./vllm*.log' --exclude='./llama*.log' . \
        | tar -C "$dst" -xf -
    if [ "$untrained" = 1 ]; then  # what the trained phases made goes
        find "$dst/phases" -mindepth 1 -maxdepth 1 ! -name '1-*' -exec rm -rf {} + 2>/dev/null || true
        find "$dst/eval" -maxdepth 1 -type f ! -name 'baseline.*' -delete 2>/dev/null || true
        find "$dst/eval" -mindepth 1 -maxdepth 1 -type d ! -name roles -exec rm -rf {} + 2>/dev/null || true
        find "$dst/eval/roles" -mindepth 1 -maxdepth 1 ! -name 'juniors_baseline.*' \
            ! -name 'juniors_baseline_repeat.*' ! -name 'senior_baseline.*' ! -name 'single_baseline.*' \
            -exec rm -rf {} + 2>/dev/null || true
        rm -rf "$dst"/report* "$dst"/plots "$dst"/export 2>/dev/null || true
    fi
    commit=$(git -C "$(dirname "$(realpath "$0")")" rev-parse --short HEAD 2>/dev/null || true)
    python3 - "$src/store.sqlite" "$dst/stopped.json" "$commit" "$untrained" <<'EOF'
import json, sqlite3, sys, time
con = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
by_status = dict(con.execute("SELECT status, COUNT(*) FROM rollouts GROUP BY status").fetchall())
json.dump({"packed_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "packed_by_commit": sys.argv[3] or None,
           "untrained_only": sys.argv[4] == "1", "rollouts_by_status": by_status}, open(sys.argv[2], "w"), indent=2)
EOF
    du -sh "$dst"
    ;;
unpack)
    [ -f "$src/store.sqlite.xz" ] || die "$src has no store.sqlite.xz: not a folder made by '$0 pack'"
    [ -e "$dst/store.sqlite" ] && die "$dst already has a store.sqlite; unpack into a new directory"
    mkdir -p "$dst"
    tar -C "$src" -cf - --exclude='./store.sqlite.xz' --exclude='./metrics.jsonl.xz' --exclude='./stopped.json' . \
        | tar -C "$dst" -xf -
    xz -dc "$src/store.sqlite.xz" > "$dst/store.sqlite"
    [ -f "$src/metrics.jsonl.xz" ] && xz -dc "$src/metrics.jsonl.xz" > "$dst/metrics.jsonl"
    echo "unpacked into $dst; continue with: sqlsociety train --resume $dst"
    ;;
*) die "unknown mode '$mode'; use pack or unpack" ;;
esac
