"""The one rule for a portable llama-server build, read from ``objdump -d`` output.

Used by ``scripts/build-llama-server.sh`` (refuses a build that breaks it) and by
``tests/test_serving.py::test_installed_build_is_portable`` (checks the installed build):

* **AMX, nowhere**: any tile instruction (``tile*``, ``ldtilecfg``/``sttilecfg``, ``tdp*``,
  ``tcmm*``, the other AMX mnemonics) or ``%tmm`` register. (``tilezero`` raised SIGILL on a VM
  of this project's kind that advertises amx_tile.)
* **AVX-512 (EVEX), only in ggml's AVX-512 CPU variants** (:data:`AVX512_VARIANTS`, which ggml
  loads only where the CPU reports AVX-512): any EVEX-encoded instruction -- on zmm, but also on
  xmm/ymm -- seen as any of the forms objdump prints: the raw opcode bytes starting with the EVEX
  escape ``62`` (after legacy prefixes; ``62`` is no other instruction in 64-bit code), the
  ``{evex}`` pseudo-prefix (objdump's mark for an EVEX form of an AVX instruction), a ``zmm``
  register, ``xmm16``-``xmm31``/``ymm16``-``ymm31``, an opmask register ``%k0``-``%k7`` (masking
  ``{%k1}``, compares into a mask, and the VEX-encoded ``kmov*``/``kand*``... instructions),
  ``{z}``, an embedded broadcast ``{1toN}``/``BCST``, embedded rounding ``{rn-sae}``/``{sae}``,
  an AVX-512-only mnemonic (``vpternlog*``, ``vpermt2*``, ``vpcompress*``, ``vmovdqu64``, ...),
  or a mnemonic that has a VEX twin (``vpdpbusd``, ...) printed without ``{vex}``.

Both AT&T (objdump's default) and ``-M intel`` syntax, with or without the raw bytes.

    python3 scripts/objdump_portability.py FILE...   # one line per file; exit 1 if one breaks the rule

>>> classify("  4:\\t62 f1 6d 08 fe d9    \\t{evex} vpaddd %xmm1,%xmm2,%xmm3")
'avx512'
>>> classify("  0:\\tc5 e9 fe d9          \\tvpaddd %xmm1,%xmm2,%xmm3")  # AVX2 (VEX): portable
>>> classify("  28:\\tc5 f8 93 c1          \\tkmovw  %k1,%eax")  # VEX-encoded, but an opmask register
'avx512'
>>> classify("  45:\\tc4 e2 7b 49 c0       \\ttilezero %tmm0")
'amx'
>>> classify("  16:\\te8 00 00 00 00       \\tcall   1b <tile_rows>")  # a symbol is no instruction
>>> classify("000000000000001b <foo>:")
>>> allowed("libggml-cpu-zen4.so"), allowed("libggml-cpu-haswell.so"), allowed("llama-server")
({'avx512'}, set(), set())
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["AVX512_VARIANTS", "allowed", "classify", "count", "check_file", "main"]

#: ggml CPU variants (``libggml-cpu-<name>*.so``) that may hold AVX-512: ggml loads them only where
#: the CPU reports AVX-512. No file may hold AMX (the AMX variant, sapphirerapids, is never installed).
AVX512_VARIANTS = ("skylakex", "cannonlake", "cascadelake", "icelake", "cooperlake", "zen4")

# an instruction line: "  addr:\t[bytes \t]text"; a continuation line has bytes only
_LINE = re.compile(r"^\s*[0-9a-f]+:\t(?:((?:[0-9a-f]{2} )+)\s*(?:\t|$))?(.*)$")
_LEGACY_PREFIX = {"26", "2e", "36", "3e", "64", "65", "66", "67", "f0", "f2", "f3"}
_TEXT_PREFIX = {"lock", "rep", "repz", "repnz", "repe", "repne", "data16", "data32", "addr16", "addr32", "notrack",
                "bnd", "cs", "ds", "es", "fs", "gs", "ss", "xacquire", "xrelease"}

_AMX_MNEMONIC = re.compile(
    r"(?:tile\w*|ldtilecfg|sttilecfg|t?tdp\w+|t?tcmm\w+|tconj\w+|t2rpntlvw\w*|ttransposed|tcvtrow\w+|t?tmmultf32ps)")
_AMX_OPERAND = re.compile(r"(?<![\w])%?tmm[0-7]\b")

_AVX512_MNEMONIC = re.compile(
    r"""(?:
      k(?:add|and|andn|mov|not|or|ortest|shiftl|shiftr|test|xnor|xor)[bwdq] | kunpck(?:bw|wd|dq)
    | vpternlog[dq] | vperm[it]2(?:b|w|d|q|ps|pd) | vperm[bw]
    | vp?compress\w* | vp?expand\w* | valign[dq] | vpconflict[dq] | vplzcnt[dq]
    | v(?:rcp|rsqrt)(?:14|28)\w* | vexp2p[sd]
    | v(?:scalef|getexp|getmant|rndscale|reduce|fixupimm|fpclass|range)\w*
    | vpmovm2[bwdq] | vpmov[bwdq]2m | vpmov(?:s|us)?(?:wb|db|dw|qb|qw|qd) | vpbroadcastm(?:b2q|w2d)
    | vptestn?m[bwdq]
    | vpcmp(?:eq|lt|le|neq|nlt|nle|false|true)?u[bwdq] | vpcmp(?:lt|le|neq|nlt|nle|false|true)?[bwdq]
    | vblendmp[sd] | vpblendm[bwdq] | vpmultishiftqb
    | vp(?:abs|maxs|maxu|mins|minu|mull|sra|srav)q | vps(?:llv|rlv|rav)w | vpro[lr]v?[dq]
    | vpshufbitqmb | vpopcnt[bwdq] | vpsh[lr]dv?[wdq] | vp2intersect[dq]
    | v(?:extract|insert)[fi](?:32x4|32x8|64x2|64x4) | vshuf[fi](?:32x4|64x2)
    | vbroadcast[fi](?:32x2|32x4|32x8|64x2|64x4)
    | vcvtt?(?:ps|pd|ss|sd|sh|ph)2u\w+ | vcvtu\w+ | vcvtt?p[sd]2qq\w? | vcvtqq2p[sd]\w?
    | vdbpsadbw | vmovdq[au](?:8|16|32|64) | vdpbf16ps | vcvtne2ps2bf16
    | v(?!cvtps2ph$)\w+(?:ph|sh)
    )""",
    re.X,
)
# AVX-512 mnemonics with a VEX twin (AVX-VNNI, AVX-IFMA, AVX-NE-CONVERT): objdump prints the VEX one as {vex} ...
_AVX512_UNLESS_VEX = re.compile(r"(?:vpdpbusds?|vpdpwssds?|vpmadd52[lh]uq|vcvtneps2bf16\w?)")
_AVX512_OPERAND = re.compile(
    r"""(?<![\w])%?zmm\d+\b | (?<![\w])%?[xy]mm(?:1[6-9]|2\d|3[01])\b | (?<![\w])%?k[0-7]\b
    | \{z\} | \{1to\d+\} | \{(?:rn|rd|ru|rz)-sae\} | \{sae\} | \bBCST\b""",
    re.X,
)


# every line classify() flags matches this (a quick screen: most lines of a disassembly are skipped by it)
_SCREEN = re.compile(r"\t(?:(?:26|2e|36|3e|64|65|66|67|f0|f2|f3) )*62 |[\t ][kvt][a-z]|tilecfg|zmm|tmm|k[0-7]|"
                     r"[xy]mm(?:1[6-9]|2\d|3[01])|\{|BCST")


def classify(line: str) -> str | None:
    """``'amx'``, ``'avx512'`` or None (portable, or not an instruction) for one line of ``objdump -d``.

    >>> classify("  a:\\t62 f1 6d 09 fe d9    \\tvpaddd %xmm1,%xmm2,%xmm3{%k1}")  # masked, on xmm
    'avx512'
    >>> classify("  10:\\t62 b1 6d 08 fe d9    \\tvpaddd %xmm17,%xmm2,%xmm3")  # xmm16-31 exist in EVEX only
    'avx512'
    >>> classify("  2c:\\t62 f3 6d 28 25 d9 ff \\tvpternlogd $0xff,%ymm1,%ymm2,%ymm3")
    'avx512'
    >>> classify("   4:\\tvpternlogd ymm3,ymm2,ymm1,0xff")  # -M intel --no-show-raw-insn
    'avx512'
    >>> classify("  1c:\\tvpaddd xmm3{k1}{z},xmm2,DWORD BCST [rax]")
    'avx512'
    >>> classify("  3a:\\tc4 e2 6d 50 d9       \\t{vex} vpdpbusd %ymm1,%ymm2,%ymm3")  # AVX-VNNI: portable
    >>> classify("  3f:\\tvpdpbusd %ymm1,%ymm2,%ymm3")  # the same mnemonic without {vex}: AVX512-VNNI
    'avx512'
    >>> classify("  13:\\t56 34 12 ")  # continuation of the previous instruction's bytes
    >>> classify("  4a:\\tc4 e2 73 5e da       \\ttdpbssd %tmm1,%tmm2,%tmm3")
    'amx'
    """
    m = _LINE.match(line) if _SCREEN.search(line) else None
    if not m:
        return None
    raw, text = m.group(1), m.group(2)
    text = re.sub(r"<[^>]*>", "", text.split("#", 1)[0]).strip()  # symbols and comments are not operands
    if not text:
        return None
    tokens = text.split()
    i = 0
    while i < len(tokens) and (tokens[i] in _TEXT_PREFIX or tokens[i].startswith("rex") or tokens[i].startswith("{")):
        i += 1
    mnemonic = tokens[i] if i < len(tokens) else ""
    operands = " ".join(tokens[i + 1:])
    if mnemonic in ("(bad)", ".byte", ".word"):
        return None
    if _AMX_MNEMONIC.fullmatch(mnemonic) or _AMX_OPERAND.search(operands):
        return "amx"
    if raw:
        first = next((b for b in raw.split() if b not in _LEGACY_PREFIX), "")
        if first == "62":  # the EVEX escape
            return "avx512"
    if ("{evex}" in tokens[:i] or _AVX512_MNEMONIC.fullmatch(mnemonic) or _AVX512_OPERAND.search(operands)
            or (_AVX512_UNLESS_VEX.fullmatch(mnemonic) and "{vex}" not in tokens[:i])):
        return "avx512"
    return None


def count(lines: Iterable[str]) -> Counter[str]:
    """Instructions of each non-portable kind (``amx``, ``avx512``) among ``objdump -d`` lines.

    >>> count(["  0:\\tc5 e9 fe d9 \\tvpaddd %xmm1,%xmm2,%xmm3", "  4:\\tkmovw %k1,%eax", "  8:\\tldtilecfg (%rax)"])
    Counter({'avx512': 1, 'amx': 1})
    """
    return Counter(k for k in map(classify, lines) if k)


def allowed(name: str) -> set[str]:
    """The non-portable kinds a file of this name may hold: AVX-512 in the AVX-512 variants only."""
    return {"avx512"} if any(name.startswith(f"libggml-cpu-{v}") for v in AVX512_VARIANTS) else set()


def check_file(path: str | Path) -> tuple[Counter[str], int, list[str]]:
    """``objdump -d path`` read with :func:`classify`: (counts, lines disassembled, problems)."""
    out = subprocess.run(["objdump", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    counts = count(lines)
    name = Path(path).name
    problems = [f"{name} holds {n} {'AMX tile' if k == 'amx' else 'AVX-512 (EVEX)'} instruction(s)"
                for k, n in sorted(counts.items()) if k not in allowed(name)]
    return counts, len(lines), problems


def main(argv: Sequence[str] | None = None) -> int:
    """Check each file; print ``objdump NAME: ...`` per file, the problems on stderr; 1 if any."""
    files = list(sys.argv[1:] if argv is None else argv)
    if not files:
        print("usage: objdump_portability.py FILE...", file=sys.stderr)
        return 2
    bad = False
    for f in files:
        counts, _, problems = check_file(f)
        print(f"objdump {Path(f).name}: {counts['amx']} AMX tile instructions, "
              f"{counts['avx512']} AVX-512 (EVEX) instructions")
        for p in problems:
            print(f"objdump_portability: {p}; not portable", file=sys.stderr)
            bad = True
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
