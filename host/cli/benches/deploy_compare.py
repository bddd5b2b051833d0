#!/usr/bin/env python3
"""`hoist deploy` vs `prefect deploy` of the same project against the same Prefect server.

Usage: python3 host/cli/benches/deploy_compare.py --prefect-python VENV/bin/python
                                                  [--runs N] [--hoist PATH]

Starts `prefect server start` (SQLite in a temporary PREFECT_HOME) on 127.0.0.1, creates a
process work pool, writes a project (one flow with typed parameters, a build step
`run_shell_script`, one deployment with a schedule, tags, parameters and job variables),
then, alternating, redeploys it with each CLI. Every figure is a whole process: wall
clock and peak RSS (from wait4's rusage). Prints medians and the ratios hoist/prefect.
"""
import argparse, os, resource, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.request, json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

FLOW = '''from typing import Optional
from prefect import flow


@flow(log_prints=True)
def hello(name: str = "world", count: int = 1, extra: Optional[dict] = None):
    """Say hello.

    Args:
        name: who to greet
    """
    print(f"hello {name}")
'''

PROJECT = '''name: bench
prefect-version: 3.9.1
build:
- prefect.deployments.steps.run_shell_script:
    id: meta
    script: echo 1.0.0
pull:
- prefect.deployments.steps.set_working_directory:
    directory: {dir}
deployments:
- name: bench-dep
  entrypoint: flows/hello.py:hello
  version: "{{{{ meta.stdout }}}}"
  tags: [bench]
  parameters: {{name: bench}}
  schedules:
  - {{cron: "0 0 * * *", timezone: UTC}}
  work_pool:
    name: bench-pool
    job_variables: {{env: {{A: b}}}}
'''


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def measure(cmd, cwd, env):
    """Wall seconds and peak RSS (MB) of one whole process."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed: {p.stderr.read().decode()[-2000:]}")
    return dt, usage.ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--hoist", default=str(ROOT / "target" / "release" / "hoist"))
    ap.add_argument("--prefect-python", required=True)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hoist-deploy-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(work / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", PREFECT_SERVER_UI_ENABLED="false", PREFECT_API_URL=url,
               HOIST_HOME=str(work / "hoist-home"))
    server = subprocess.Popen([a.prefect_python, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(900):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).read()
                break
            except Exception:
                time.sleep(0.1)
        req = urllib.request.Request(f"{url}/work_pools/", data=json.dumps({"name": "bench-pool", "type": "process"}).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
        urllib.request.urlopen(req).read()
        proj = work / "proj"
        (proj / "flows").mkdir(parents=True)
        (proj / "flows" / "hello.py").write_text(FLOW)
        (proj / "prefect.yaml").write_text(PROJECT.format(dir=proj))
        clients = {
            "hoist": [a.hoist, "deploy", "--all"],
            "prefect": [a.prefect_python, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        }
        for cmd in clients.values():
            measure(cmd, proj, env)  # warm-up: first deploy, compile cache, .pyc files
        times = {n: [] for n in clients}
        rss = {n: [] for n in clients}
        for _ in range(a.runs):
            for name, cmd in clients.items():
                dt, mb = measure(cmd, proj, env)
                times[name].append(dt)
                rss[name].append(mb)
        print(f"redeploy of one deployment (build step run_shell_script), {a.runs} alternated runs, same server:")
        for name in clients:
            print(f"  {name:8} median {statistics.median(times[name]) * 1000:8.1f} ms"
                  f"  (min {min(times[name]) * 1000:.1f}, max {max(times[name]) * 1000:.1f})"
                  f"  peak RSS {statistics.median(rss[name]):6.1f} MB")
        print(f"  hoist / prefect: time {statistics.median(times['hoist']) / statistics.median(times['prefect']):.2f}x,"
              f" memory {statistics.median(rss['hoist']) / statistics.median(rss['prefect']):.2f}x")
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
