#!/usr/bin/env python3
"""Build + push of one small context: `hoist push` vs the docker CLI vs Prefect's own steps.

Usage: python3 host/cli/benches/docker_compare.py [--runs N] [--hoist PATH]
                                                  [--prefect-python PATH]

Starts its own engine (Podman's Docker-compatible API service, runc, overlay storage under
a temporary directory) and a Distribution registry on 127.0.0.1, builds a base image
FROM scratch with Debian's static busybox, then, alternating, for each client builds the
same context with no cache (`FROM base`, a `RUN`, a `COPY` of 50 small files, a label)
and pushes the result to the registry under a fresh tag:
  - `hoist push` on a prefect.yaml with build_docker_image + push_docker_image;
  - the docker CLI (`docker build --no-cache` + `docker push`, DOCKER_BUILDKIT=0) against
    the same engine: the baseline;
  - with --prefect-python (a venv holding `prefect` and `prefect-docker`), Prefect's own
    `build_docker_image` + `push_docker_image` in one Python process, same engine.
Every figure is a whole process, wall clock. Prints medians and ratios against the docker
CLI measured in the same run (target for hoist: <= 1.1x).
Needs podman, runc, docker-registry, busybox (Debian packages) and the docker CLI.
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time, socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

PREFECT_SCRIPT = """
import sys
from prefect_docker.deployments.steps import build_docker_image, push_docker_image
image, tag = sys.argv[1], sys.argv[2]
b = build_docker_image(image_name=image, tag=tag, nocache=True, pull=False)
push_docker_image(image_name=b["image_name"], tag=b["tag"])
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(cmd, cwd=None, env=None):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p


def timed(cmd, cwd=None, env=None):
    t = time.perf_counter()
    run(cmd, cwd, env)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--hoist", default=str(ROOT / "target" / "release" / "hoist"))
    ap.add_argument("--prefect-python", default=None)
    a = ap.parse_args()
    for tool in ["podman", "runc", "docker-registry", "busybox", "docker"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (apt-get install podman runc docker-registry busybox-static)")
    work = Path(tempfile.mkdtemp(prefix="hoist-docker-bench-"))
    procs = []
    try:
        port = free_port()
        (work / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{work}/storage"\nrunroot = "{work}/run"\n')
        (work / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
        (work / "registries.conf").write_text(
            f'unqualified-search-registries = []\n[[registry]]\nlocation = "127.0.0.1:{port}"\ninsecure = true\n')
        (work / "registry.yml").write_text(
            f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {work}/reg}}\n"
            f"http: {{addr: 127.0.0.1:{port}}}\n")
        env = dict(os.environ,
                   CONTAINERS_STORAGE_CONF=str(work / "storage.conf"),
                   CONTAINERS_CONF=str(work / "containers.conf"),
                   CONTAINERS_REGISTRIES_CONF=str(work / "registries.conf"))
        sock = work / "podman.sock"
        procs.append(subprocess.Popen(["docker-registry", "serve", str(work / "registry.yml")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                if sock.exists():
                    break
            except OSError:
                pass
            time.sleep(0.05)
        registry = f"127.0.0.1:{port}"
        base = f"{registry}/base/busybox:1"
        bdir = work / "base"
        bdir.mkdir()
        shutil.copy(shutil.which("busybox"), bdir / "busybox")
        (bdir / "Containerfile").write_text(
            'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n')
        run(["podman", "build", "-q", "-t", base, str(bdir)], env=env)
        run(["podman", "push", "-q", base], env=env)

        ctx = work / "ctx"
        (ctx / "flows").mkdir(parents=True)
        for i in range(50):
            (ctx / "flows" / f"f{i:02}.py").write_text(f"print({i})\n" * 40)
        (ctx / "Dockerfile").write_text(
            f"FROM {base}\nRUN echo built > /built.txt\nCOPY . /app\nLABEL bench=1\n")
        # Debian 12's Podman (buildah 1.28.2) is accepted knowingly, as the tests do.
        docker_env = dict(env, DOCKER_HOST=f"unix://{sock}", DOCKER_BUILDKIT="0",
                          HOIST_HOME=str(work / "hoist-home"), HOIST_ALLOW_OLD_BUILDAH="1")

        def hoist_cmd(tag):
            (ctx / "prefect.yaml").write_text(
                "build:\n- prefect_docker.deployments.steps.build_docker_image:\n    id: b\n"
                f"    image_name: {registry}/bench/hoist\n    tag: '{tag}'\n    nocache: true\n    pull: false\n"
                "push:\n- prefect_docker.deployments.steps.push_docker_image:\n"
                "    image_name: '{{ b.image_name }}'\n    tag: '{{ b.tag }}'\ndeployments: [{name: d}]\n")
            return [a.hoist, "push"]

        def docker_cmd(tag):
            ref = f"{registry}/bench/docker:{tag}"
            # The same image Hoist builds: Prefect's steps label it with the Prefect version.
            return ["sh", "-c", f"docker build -q --no-cache --label io.prefect.version=3.9.1 -t {ref} . >/dev/null"
                                f" && docker push -q {ref} >/dev/null"]

        clients = {"hoist": hoist_cmd, "docker CLI": docker_cmd}
        if a.prefect_python:
            script = work / "prefect_steps.py"
            script.write_text(PREFECT_SCRIPT)
            clients["prefect-docker"] = lambda tag: [a.prefect_python, str(script), f"{registry}/bench/prefect", tag]
        # Warm-up (the first hoist run compiles the built-in components into the cache).
        for name, make in clients.items():
            timed(make("warm"), cwd=ctx, env=docker_env)
        times = {n: [] for n in clients}
        for r in range(a.runs):
            for name, make in clients.items():
                times[name].append(timed(make(f"r{r}"), cwd=ctx, env=docker_env))
        base_med = statistics.median(times["docker CLI"])
        print(f"build (no cache) + push of a 51-file context, {a.runs} alternated runs, same engine (Podman API) and registry:")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"  {name:15} median {med * 1000:8.1f} ms  (min {min(ts) * 1000:.1f}, max {max(ts) * 1000:.1f})"
                  f"  ratio vs docker CLI {med / base_med:.2f}x")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
