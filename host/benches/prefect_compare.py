#!/usr/bin/env python3
"""Hoist vs Prefect's own step runner on the same pull section, in one run.

Usage: python3 host/benches/prefect_compare.py [--runs N] [--hoist PATH]

Creates (once) a venv under target/prefect-venv with Prefect 3.8 from PyPI (fastapi<0.155:
newer FastAPI breaks Prefect 3.8's temporary server; PREFECT_API_URL points at a closed
port so Prefect never starts that server), then runs the pull section
`set_working_directory` + `run_shell_script: echo hi` through
`prefect.deployments.steps.core.run_steps` and through `hoist pull`, alternating, and
prints medians and ratios:
  - whole process: `python prefect_pull.py` vs `hoist pull`;
  - the runner's own time over the raw work it wraps (`echo hi` run directly).
The git_clone case needs the git_clone step (not available yet) and is skipped.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / "target" / "prefect-venv"

PREFECT_SCRIPT = r'''
import asyncio, sys, time, yaml
t0 = time.perf_counter()
from prefect.deployments.steps.core import run_steps
t1 = time.perf_counter()
steps = yaml.safe_load(open(sys.argv[1]))["pull"]
out = asyncio.run(run_steps(steps))
t2 = time.perf_counter()
print(f"IMPORT_MS {(t1 - t0) * 1000:.3f} RUN_MS {(t2 - t1) * 1000:.3f} STDOUT {out.get('stdout')!r}")
'''

def ensure_venv():
    py = VENV / "bin" / "python"
    if py.exists():
        return py
    print(f"creating {VENV} with prefect 3.8 (once)...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "prefect>=3.8,<3.9", "fastapi<0.155"], check=True)
    return py

def timed(cmd, **kw):
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    dt = (time.perf_counter() - t) * 1000
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return dt, p.stdout

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--hoist", default=str(ROOT / "target" / "release" / "hoist"))
    args = ap.parse_args()
    hoist = args.hoist
    if not Path(hoist).exists():
        sys.exit(f"{hoist} not found: build it with `cargo build --release`")
    py = ensure_venv()
    work = Path(tempfile.mkdtemp(prefix="hoist-vs-prefect-"))
    (work / "flows").mkdir()
    (work / "prefect.yaml").write_text(
        "pull:\n"
        f"  - prefect.deployments.steps.set_working_directory:\n      directory: {work / 'flows'}\n"
        "  - prefect.deployments.steps.run_shell_script:\n      script: echo hi\n"
    )
    script = work / "prefect_pull.py"
    script.write_text(PREFECT_SCRIPT)
    env = dict(os.environ, PREFECT_API_URL="http://127.0.0.1:9/api", PREFECT_HOME=str(work / ".prefect"),
               HOIST_HOME=str(work / ".hoist"), HOIST_CACHE_DIR=str(work / ".hoist-cache"))
    echo = shutil.which("echo")
    # Warm up both (Hoist compiles its components into the cache on first use).
    timed([str(py), str(script), str(work / "prefect.yaml")], cwd=work, env=env)
    timed([hoist, "pull", "--output", "json"], cwd=work, env=env)

    pw, hw, pin, hin, raw, imports = [], [], [], [], [], []
    for _ in range(args.runs):
        dt, out = timed([str(py), str(script), str(work / "prefect.yaml")], cwd=work, env=env)
        pw.append(dt)
        fields = out.split()
        imports.append(float(fields[fields.index("IMPORT_MS") + 1]))
        pin.append(float(fields[fields.index("RUN_MS") + 1]))
        dt, out = timed([hoist, "pull", "--output", "json"], cwd=work, env=env)
        hw.append(dt)
        done = json.loads(out.strip().splitlines()[-1])
        assert done["outputs"]["stdout"] == "hi", done
        hin.append(done["duration_ms"])
        dt, _ = timed([echo, "hi"])
        raw.append(dt)
    m = statistics.median
    print(f"pull section: set_working_directory + run_shell_script `echo hi`, median of {args.runs} alternated runs")
    print(f"  whole process   prefect {m(pw):8.1f} ms (import {m(imports):.0f} ms)   hoist {m(hw):6.1f} ms   hoist is {m(pw) / m(hw):5.0f}× faster (target ≥ 100×)")
    print(f"  runner          prefect run_steps {m(pin):7.1f} ms   hoist section {m(hin):5.2f} ms   raw `echo hi` process {m(raw):5.2f} ms")
    print(f"  over raw work   prefect {m(pin) / m(raw):6.1f}×   hoist section {m(hin) / m(raw):4.2f}× (target ≤ 1.5×)   hoist whole process {m(hw) / m(raw):4.1f}×")
    print("  git_clone case: skipped (the git_clone step is not available yet)")
    shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
