#!/usr/bin/env python3
"""make replicate's report: per row, the final val top-1 of each seed's run, as
mean +- sample std, beside the paired difference to the hard-label or to the headline
KD run of the same seed; a bar chart; written into docs/REPLICATION.md between the
results markers (the hand-written reading around them is kept) and docs/replication.png.

usage: replication_report.py RUN_DIR SECONDS "settings"
"""
import json
import os
import statistics
import sys

RUN, SECONDS, SETTINGS = sys.argv[1], int(sys.argv[2]), sys.argv[3]
DOC = "docs/REPLICATION.md"
PNG = "docs/replication.png"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# (row, label, compared with)
ROWS = [
    ("hard", "hard labels (CE), pre-trained init", None),
    ("kd", "MEAL V2 KD, ensemble A+B, dense, pool 80, disc on", "hard"),
    ("kd_teacher_a", "KD from teacher A alone", "kd"),
    ("kd_teacher_b", "KD from teacher B alone", "kd"),
    ("kd_wd0", "KD, weight decay 0", "kd"),
    ("kd_wd1e-4", "KD, weight decay 1e-4", "kd"),
    ("kd_random_init", "KD, random init", "kd"),
    ("hard_random_init", "hard labels, random init", "hard"),
    ("kd_disc_off", "KD, discriminator off", "kd"),
    ("kd_top5", "KD, top-5 labels", "kd"),
    ("kd_top1", "KD, top-1 labels", "kd"),
    ("kd_pool2", "KD, pool of 2 crops per image", "kd"),
    ("kd_pool8", "KD, pool of 8", "kd"),
    ("kd_pool32", "KD, pool of 32", "kd"),
    ("kd_online", "KD, online teachers (fresh crops every step)", "kd"),
]


def final_top1(row):
    out = {}
    d = os.path.join(RUN, row)
    if not os.path.isdir(d):
        return out
    for s in sorted(os.listdir(d)):
        m = os.path.join(d, s, "metrics.jsonl")
        if os.path.isfile(os.path.join(d, s, ".done")) and os.path.isfile(m):
            lines = [json.loads(l) for l in open(m) if l.strip()]
            out[s] = 100.0 * lines[-1]["val_top1"]
    return out


def secs(row):
    """Mean wall seconds per run (from metrics: crops / crops_per_s summed)."""
    d = os.path.join(RUN, row)
    ts = []
    for s in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        m = os.path.join(d, s, "metrics.jsonl")
        if os.path.isfile(m):
            lines = [json.loads(l) for l in open(m) if l.strip()]
            ts.append(sum(l["crops"] / max(l["crops_per_s"], 1e-9) for l in lines))
    return statistics.mean(ts) if ts else float("nan")


def store_bytes(name):
    p = os.path.join(RUN, "labels", name, "manifest.json")
    if not os.path.isfile(p):
        return None
    m = json.load(open(p))
    return sum(s["bytes"] for s in m["shards"])


def ms(v):
    if not v:
        return "-"
    if len(v) == 1:
        return f"{v[0]:.1f}"
    return f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}"


res = {r: final_top1(r) for r, _, _ in ROWS}
lines = [
    f"Command: `make replicate` ({SETTINGS}); {SECONDS / 60:.0f} min wall on this machine "
    f"({os.cpu_count()} cores, two runs side by side, one thread each).",
    "",
    "| row | val top-1 % (mean ± std over seeds) | seeds | paired Δ vs | Δ mean ± std | train steps s/run | label bytes |",
    "|---|---|---|---|---|---|---|",
]
bytes_of = {"kd": "ens", "kd_teacher_a": "a", "kd_teacher_b": "b", "kd_top5": "top5",
            "kd_top1": "top1", "kd_pool2": "p2", "kd_pool8": "p8", "kd_pool32": "p32"}
for row, label, base in ROWS:
    v = res[row]
    delta, vs = "-", "-"
    if base and v and res[base]:
        common = sorted(set(v) & set(res[base]))
        d = [v[s] - res[base][s] for s in common]
        if d:
            vs = base
            delta = ms(d) if len(d) > 1 else f"{d[0]:+.1f}"
            if len(d) > 1:
                delta = f"{statistics.mean(d):+.1f} ± {statistics.stdev(d):.1f}"
    b = store_bytes(bytes_of[row]) if row in bytes_of else None
    lines.append(
        f"| {label} | {ms(list(v.values()))} | {len(v)} | {vs} | {delta} | {secs(row):.0f} | "
        f"{'-' if b is None else f'{b / 1e6:.2f} MB'} |"
    )
per_seed = ", ".join(
    f"{s}: hard {res['hard'][s]:.1f} / KD {res['kd'][s]:.1f}"
    for s in sorted(set(res["hard"]) & set(res["kd"]))
)
def paired(a, b):
    common = sorted(set(res[a]) & set(res[b]))
    d = [res[a][s] - res[b][s] for s in common]
    if len(d) < 2:
        return "-"
    return f"{statistics.mean(d):+.1f} ± {statistics.stdev(d):.1f} ({len(d)} seeds)"


lines += [
    "",
    f"Headline per seed: {per_seed}.",
    f"KD with online teachers - hard labels, paired (the like-for-like of bench/kd_torch.py): "
    f"{paired('kd_online', 'hard')}. KD from random init - hard labels from random init: "
    f"{paired('kd_random_init', 'hard_random_init')}.",
    "",
    "train steps s/run: the seconds spent in training steps (no evaluation), with two runs "
    "sharing the 2 cores and other work on the machine: relative, not absolute, costs.",
    "",
    f"![rows]({os.path.basename(PNG)})",
]

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [label for r, label, _ in ROWS if res[r]]
    vals = [list(res[r].values()) for r, _, _ in ROWS if res[r]]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.5))
    y = range(len(names))
    ax.barh(y, [statistics.mean(v) for v in vals],
            xerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in vals],
            color=["#999999" if "hard" in n else "#3b75af" for n in names], capsize=3)
    for i, v in enumerate(vals):
        ax.plot(v, [i] * len(v), "k.", ms=4)
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("demo val top-1 % (bar: mean, whisker: std, dots: seeds)")
    lo = min(min(v) for v in vals)
    ax.set_xlim(max(0, lo - 10), 100)
    ax.set_title("MEAL V2 on the demo: make replicate")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)
except ImportError:
    lines.append("(matplotlib missing: no plot)")

block = BEGIN + "\n" + "\n".join(lines) + "\n" + END
text = open(DOC).read() if os.path.isfile(DOC) else f"# Replication\n\n{BEGIN}\n{END}\n"
if BEGIN in text and END in text:
    text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
else:
    text += "\n" + block + "\n"
open(DOC, "w").write(text)
print("\n".join(lines))
