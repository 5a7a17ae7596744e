"""The device check's throughput lines side by side (bench/gpu_check.sh runs it last).

Reads the log of `gpu_check.sh` (the models bench's "ours ..." lines and
bench/models_torch.py's "torch ..." lines) and prints, per mode, network and dtype, each
of our variants (our convolutions or cuDNN's, fused or not, TF32 or exact) against PyTorch's in the same
run; for the train step also against PyTorch's AMP step, the issue's reference.
    python3 bench/gpu_summary.py LOG
"""
import re
import sys

LINE = re.compile(
    r"^(ours|torch) (\w+) (\S+) res (\d+) batch (\d+): ([\d.]+) img/s \((.*)\)\s*$"
)


def parse(lines):
    ours, torch = [], {}
    for line in lines:
        m = LINE.match(line.strip())
        if not m:
            continue
        who, mode, arch, res, batch, ips, rest = m.groups()
        dtype = next((d for d in ("bf16", "f16", "f32") if re.search(rf"\b{d}\b", rest)), "f32")
        key = (mode, arch, int(res), int(batch), dtype)
        if "profiled" in rest:
            continue  # the device synchronised around each op: not a speed
        if who == "torch":
            torch[key] = float(ips)
        else:
            # whole words: "refused" must not read as "fused"
            flags = [f for f in ("tf32", "cuDNN", "fused", "one-gemm", "pool-release")
                     if re.search(rf"(?<![\w-]){f}(?![\w-])", rest)]
            # calls cuDNN refused ran our convolutions: not a pure cuDNN figure
            if "calls refused" in rest:
                flags.append("some-refused")
            ours.append((key, "+".join(flags) or "exact", float(ips)))
    return ours, torch


def main():
    with open(sys.argv[1], errors="replace") as f:
        lines = f.readlines()
    ours, torch = parse(lines)
    if not ours:
        print("no throughput lines found")
        return
    print(f"{'mode':7} {'network':11} {'dtype':5} {'ours (variant)':24} {'img/s':>9} "
          f"{'torch':>9} {'ratio':>6} {'vs AMP':>7}")
    for (mode, arch, res, batch, dtype), variant, ips in ours:
        t = torch.get((mode, arch, res, batch, dtype))
        amp = torch.get((mode, arch, res, batch, "bf16"))
        ratio = f"{ips / t:.2f}x" if t else "-"
        vs_amp = f"{ips / amp:.2f}x" if amp and mode != "infer" else ""
        torch_ips = f"{t:9.1f}" if t else f"{'-':>9}"
        print(f"{mode:7} {arch:11} {dtype:5} {variant:24} {ips:9.1f} "
              f"{torch_ips} {ratio:>6} {vs_amp:>7}")
    for line in lines:
        if line.startswith("precompute / pure inference"):
            print(line.rstrip())
    # what the defaults hang on (docs/PIPELINE.md: teacher dtype, --amp, MEAL_CUDA_CONV):
    # per mode and network, our variants from fastest, against PyTorch's fastest line
    print("\nfastest first, per mode and network (ratio to PyTorch's fastest in this run):")
    groups = {}
    for (mode, arch, res, batch, dtype), variant, ips in ours:
        groups.setdefault((mode, arch, res, batch), []).append((ips, dtype, variant))
    for (mode, arch, res, batch), runs in groups.items():
        best_torch = max((v for k, v in torch.items() if k[:4] == (mode, arch, res, batch)), default=None)
        ranked = ", ".join(
            f"{d} {v} {ips:.0f}" + (f" ({ips / best_torch:.2f}x)" if best_torch else "")
            for ips, d, v in sorted(runs, reverse=True)
        )
        print(f"  {mode} {arch} {res} px batch {batch}: {ranked}")
    # every step that failed or was skipped, by its heading: a summary must not hide them
    # (on a CPU rehearsal the GPU-only steps fail as they must)
    bad, heading = [], None
    for line in lines:
        if line.startswith("## "):
            heading = line[3:].strip()
        elif heading and (line.startswith("(skipped") or re.match(r"^\(exit [1-9]", line)):
            bad.append(f"  {line.strip()}  {heading}")
    print(f"\nsteps failed or skipped: {len(bad)}")
    print("\n".join(bad))


if __name__ == "__main__":
    main()
