#!/usr/bin/env python3
"""Hoist vs Prefect's own step runner on the same pull section, in one run.

Usage: python3 host/cli/benches/prefect_compare.py [--runs N] [--hoist PATH]

Creates (once) a venv under target/prefect-venv with Prefect 3.8 from PyPI (fastapi<0.155:
newer FastAPI breaks Prefect 3.8's temporary server; PREFECT_API_URL points at a closed
port so Prefect never starts that server), then runs the pull section
`set_working_directory` + `run_shell_script: echo hi` through
`prefect.deployments.steps.core.run_steps` and through `hoist pull`, alternating, and
prints medians and ratios:
  - whole process: `python prefect_pull.py` vs `hoist pull`;
  - the runner's own time over the raw work it wraps (`echo hi` run directly).
A second case runs `git_clone` of a local repository of 200 files the same ways, against
a plain `git clone --depth 1`; a third times `hoist step run git_clone` of a 5,000-file
repository against `git clone --depth 1` alone (no Prefect).
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
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

def make_repo(path, files):
    path.mkdir(parents=True)
    for i in range(files):
        d = path / f"pkg{i % 50}"
        d.mkdir(exist_ok=True)
        (d / f"mod{i}.py").write_text(f"VALUE = {i}\n" * 20)
    g = ["git", "-c", "user.name=b", "-c", "user.email=b@b", "-c", "init.defaultBranch=main"]
    subprocess.run(g + ["init", "-q"], cwd=path, check=True)
    subprocess.run(g + ["add", "."], cwd=path, check=True)
    subprocess.run(g + ["commit", "-qm", "files"], cwd=path, check=True)
    return f"file://{path}"

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
    state = Path(tempfile.mkdtemp(prefix="hoist-vs-prefect-state-"))
    (work / "flows").mkdir()
    (work / "prefect.yaml").write_text(
        "pull:\n"
        f"  - prefect.deployments.steps.set_working_directory:\n      directory: {work / 'flows'}\n"
        "  - prefect.deployments.steps.run_shell_script:\n      script: echo hi\n"
    )
    script = work / "prefect_pull.py"
    script.write_text(PREFECT_SCRIPT)
    env = dict(os.environ, PREFECT_API_URL="http://127.0.0.1:9/api", PREFECT_HOME=str(work / ".prefect"),
               # Hoist's own directories must lie outside every directory a step is given.
               HOIST_HOME=str(state / "home"), HOIST_CACHE_DIR=str(state / "cache"))
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

    # Case 2: git_clone of a local 200-file repository.
    url = make_repo(work / "repo200", 200)
    (work / "prefect.yaml").write_text(
        "pull:\n  - prefect.deployments.steps.git_clone:\n"
        f"      repository: {url}\n      clone_directory_name: clone\n"
    )
    def clean():
        shutil.rmtree(work / "clone", ignore_errors=True)
    pw, hw, pin, hin, raw = [], [], [], [], []
    for _ in range(args.runs):
        clean()
        dt, out = timed([str(py), str(script), str(work / "prefect.yaml")], cwd=work, env=env)
        pw.append(dt)
        fields = out.split()
        pin.append(float(fields[fields.index("RUN_MS") + 1]))
        clean()
        dt, out = timed([hoist, "pull", "--output", "json"], cwd=work, env=env)
        hw.append(dt)
        hin.append(json.loads(out.strip().splitlines()[-1])["duration_ms"])
        clean()
        dt, _ = timed(["git", "clone", "-q", "--depth", "1", url, str(work / "clone")])
        raw.append(dt)
    print(f"git_clone of a local 200-file repository, median of {args.runs} alternated runs")
    print(f"  whole process   prefect {m(pw):8.1f} ms   hoist {m(hw):6.1f} ms   hoist is {m(pw) / m(hw):5.1f}× faster (target ≥ 25×)")
    print(f"  over raw work   prefect run_steps {m(pin) / m(raw):5.2f}×   hoist section {m(hin) / m(raw):4.2f}×   (raw `git clone --depth 1` {m(raw):.1f} ms)")

    # Case 3: hoist step run git_clone of 5,000 files vs git clone --depth 1.
    url = make_repo(work / "repo5000", 5000)
    hs, raw = [], []
    for _ in range(max(5, args.runs // 2)):
        clean()
        dt, _ = timed([hoist, "step", "run", "git_clone", "-q", "-i", f"repository={url}", "-i", "clone_directory_name=clone"], cwd=work, env=env)
        hs.append(dt)
        clean()
        dt, _ = timed(["git", "clone", "-q", "--depth", "1", url, str(work / "clone")])
        raw.append(dt)
    print(f"git_clone of a local 5,000-file repository: `hoist step run git_clone` {m(hs):.1f} ms vs `git clone --depth 1` {m(raw):.1f} ms: {m(hs) / m(raw):.2f}× (target ≤ 1.15×)")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)

if __name__ == "__main__":
    main()
