#!/usr/bin/env python3
"""What one checkpoint touches: its code and data footprint, from a valgrind lackey trace.

A checkpoint at a person's pace pays for every line of code and data it touches, each found
cold (`hs-bench cold` measures what one costs). This counts them for each checkpoint of a
primary run under lackey, between the probe's first and last marks.

    CARGO_TARGET_DIR=/work/tgt-probe cargo build --release -p tetris --features probe
    BIN=/work/tgt-probe/release/tetris
    # a spare (HS_ROLE=spare) as usual, and the primary under lackey, keys typed slowly:
    ( sleep 20; for k in j l k j l k; do printf $k; sleep 2; done ) | \\
      HS_ROLE=primary HS_MODE=lazy HS_STRATEGY=copy HS_TRANSPORT=unix HS_SOCKET_DIR=... \\
      valgrind --fair-sched=yes --tool=lackey --trace-mem=yes --log-file=lk.log \\
      $BIN --headless --seed 1 --stats stats.json
    python3 lackey_footprint.py lk.log $BIN [CHECKPOINT]

`--fair-sched=yes` matters: without it the link's sender thread hardly runs under valgrind,
snapshots pile up in the slot and every checkpoint takes the merging path. The binary is a
position-independent executable, loaded by valgrind at 0x108000; the probe's marks are stores
to `hslib::probe::on::CURRENT` (its first and last slots bracket a checkpoint).
"""
import bisect
import collections
import subprocess
import sys

BASE = 0x108000
STACK = 0x1000000000  # valgrind puts the main stack above this; lackey's mmaps sit below


def symbols(binary):
    out = subprocess.run(["nm", "-C", "--defined-only", "-n", binary],
                         capture_output=True, text=True, check=True).stdout
    syms, current = [], None
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) < 3:
            continue
        addr, kind, name = int(parts[0], 16) + BASE, parts[1], parts[2]
        if kind in "tTwW":
            syms.append((addr, name))
        if name == "hslib::probe::on::CURRENT":
            current = addr
    syms.sort()
    if current is None:
        sys.exit("no hslib::probe::on::CURRENT: build with --features probe")
    return syms, current


def checkpoints(log, enter, leave):
    segs, cur, last_i = [], None, 0
    with open(log) as f:
        for line in f:
            if line.startswith("=="):
                continue
            kind, rest = line[:2].strip(), line[2:].strip()
            try:
                a, s = rest.split(",")
                a, s = int(a, 16), int(s)
            except ValueError:
                continue
            if kind in ("S", "M") and a == enter:
                cur = []
                continue
            if cur is None:
                continue
            if kind in ("S", "M") and a == leave:
                segs.append(cur)
                cur = None
                continue
            if enter <= a < leave + 8:
                continue  # the probe's own slots
            if kind == "I":
                last_i = a
            cur.append((kind, a, s, last_i))
    # The probe's end() swaps its slots: that makes a short segment between two checkpoints.
    return [s for s in segs if len(s) > 100]


def lines_of(accesses):
    out = set()
    for _, a, s, _ in accesses:
        out.update(range(a // 64, (a + s - 1) // 64 + 1))
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    log, binary = sys.argv[1], sys.argv[2]
    syms, current = symbols(binary)
    addrs = [s[0] for s in syms]
    segs = checkpoints(log, current, current + 8 * 11)
    for i, seg in enumerate(segs):
        code = lines_of([x for x in seg if x[0] == "I"])
        data = [x for x in seg if x[0] != "I"]
        stack = lines_of([x for x in data if x[1] >= STACK and x[1] < 0x100000000000])
        dl = lines_of(data)
        instrs = sum(1 for x in seg if x[0] == "I")
        print(f"checkpoint {i}: {instrs} instructions; code {len(code)} lines on "
              f"{len({l // 64 for l in code})} pages; data {len(dl)} lines on "
              f"{len({l // 64 for l in dl})} pages (stack {len(stack)} lines)")
    if len(sys.argv) > 3:
        seg = segs[int(sys.argv[3])]
        byfn = collections.defaultdict(set)
        for kind, a, s, _ in seg:
            if kind != "I":
                continue
            k = bisect.bisect_right(addrs, a) - 1
            name = syms[k][1] if a < 0x1000000 and k >= 0 else "(shared library)"
            byfn[name].update(range(a // 64, (a + s - 1) // 64 + 1))
        print("code lines by function:")
        for name, ls in sorted(byfn.items(), key=lambda kv: -len(kv[1])):
            print(f"  {len(ls):4} {name[:100]}")
        pages = collections.Counter(l // 64 for l in lines_of([x for x in seg if x[0] != "I"]))
        print("data lines by page:", ", ".join(f"{p * 4096:x}:{n}" for p, n in sorted(pages.items())))


main()
