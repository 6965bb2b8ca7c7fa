"""test_deploy.py: the deployment files, checked for real where this machine can run them.

Two daemons ($MB_BIN, the fixture model) share one session_dir behind Debian's nginx with the
shipped configuration (deploy/nginx, rendered with loopback ports). Through nginx: a session's
requests always reach one daemon (told by X-Mambabyte-Daemon), forks included; requests without
a session reach both; streams arrive whole and equal to the same request made straight to a
daemon, and as they are made (not buffered). Then one daemon is killed: requests without a
session all succeed on the other, a session the dead daemon had saved continues there with the
bytes it would have given, and one it had not saved gets a 404 that says why. A daemon stopped
with SIGTERM finishes its stream while nginx sends new work to the other.

The files that cannot run here are checked as far as they can be: `nginx -t`; the systemd unit
with `systemd-analyze verify` (where systemd is installed); every Kubernetes manifest parses and
holds what the deployment relies on, and the daemon starts with the ConfigMap's settings; the
Dockerfiles' build stage is run outside Docker from exactly the files it copies, and the
runtime packages they install cover the libraries that binary links."""
import base64
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "http"))
from mbserver import BIN, MODEL, ROOT, Server, b64, free_port, parse_sse, run  # noqa: E402

import yaml  # noqa: E402

DEPLOY = os.path.join(ROOT, "deploy")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """nginx with deploy/nginx/mambabyte.conf.in rendered for `daemons` (host:port), in a
    directory of its own, in the foreground."""

    def __init__(self, daemons):
        self.dir = tempfile.mkdtemp(prefix="mb-nginx-")
        os.chmod(self.dir, 0o755)  # nginx's workers run as nobody when the master is root
        self.port = free_port()
        conf = subprocess.run([os.path.join(DEPLOY, "nginx/render.sh"), f"127.0.0.1:{self.port}", *daemons],
                              check=True, capture_output=True, text=True).stdout
        with open(os.path.join(self.dir, "mambabyte.conf"), "w") as f:
            f.write(conf)
        d = self.dir
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(f"""worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/mambabyte.conf;
}}
""")
        self.args = [NGINX, "-p", d, "-c", f"{d}/nginx.conf", "-e", f"{d}/error.log"]
        self.proc = None

    def check(self):
        """nginx -t: the configuration is valid."""
        r = subprocess.run(self.args + ["-t"], capture_output=True, text=True)
        assert r.returncode == 0 and "test is successful" in r.stderr, r.stderr

    def start(self):
        self.proc = subprocess.Popen(self.args + ["-g", "daemon off;"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if call(self.port, "GET", "/health", timeout=5)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError("nginx not answering:\n" + self.log())

    def log(self):
        with open(os.path.join(self.dir, "error.log"), errors="replace") as f:
            return f.read()[-4000:]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def call(port, method, path, body=None, headers=None, timeout=60):
    """(status, parsed JSON or text, headers) of one request to 127.0.0.1:port."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    c.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    ctype = r.getheader("Content-Type", "")
    out = json.loads(data) if ctype.startswith("application/json") else data.decode("utf-8", "replace")
    return r.status, out, {k.lower(): v for k, v in r.getheaders()}


def gen_body(prompt, n=24, seed=11):
    return {"prompt_base64": base64.b64encode(prompt).decode(), "max_tokens": n, "seed": seed}


def daemon_of(headers):
    return headers["x-mambabyte-daemon"]


# ---- the shipped files, checked without running them ----

def test_nginx_config():
    lb = Nginx(["127.0.0.1:1", "127.0.0.1:2"])
    lb.check()
    conf = open(os.path.join(lb.dir, "mambabyte.conf")).read()
    # streams pass unbuffered even from a daemon that does not say X-Accel-Buffering: no
    assert re.search(r"^    proxy_buffering off;$", conf, re.M), conf
    assert conf.count("server 127.0.0.1:2 max_fails=1 fail_timeout=10s;") == 2, conf
    # render.sh refuses what would make a broken file
    for args in ([], ["8080"], ["8080", "no-port"]):
        r = subprocess.run([os.path.join(DEPLOY, "nginx/render.sh"), *args], capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr, (args, r)


def test_systemd_unit():
    path = os.path.join(DEPLOY, "systemd/mambabyte@.service")
    text = open(path).read()
    keys = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault(k, []).append(v)
    for k, v in {"DynamicUser": "yes", "ProtectSystem": "strict", "NoNewPrivileges": "yes",
                 "StateDirectory": "mambabyte", "ProtectHome": "yes", "PrivateTmp": "yes"}.items():
        assert keys.get(k) == [v], (k, keys.get(k))
    env = dict(e.split("=", 1) for e in keys["Environment"])
    assert env["CUDA_VISIBLE_DEVICES"] == "%i" and env["MAMBABYTE_SESSION_DIR"].startswith("/var/lib/mambabyte/")
    # TimeoutStopSec covers the drain (shutdown_timeout_s, 30 s by default)
    assert int(keys["TimeoutStopSec"][0]) > 30
    verify = shutil.which("systemd-analyze")
    if not verify:
        print("     systemd-analyze not installed: the unit's static checks only")
        return
    # verify needs ExecStart to exist: point it at the binary under test
    d = tempfile.mkdtemp(prefix="mb-unit-")
    unit = os.path.join(d, "mambabyte@.service")
    with open(unit, "w") as f:
        f.write(text.replace("/opt/mambabyte/bin/mambabyte", os.path.abspath(BIN)))
    r = subprocess.run([verify, "verify", "mambabyte@0.service"], cwd=d, capture_output=True, text=True)
    # unknown keys and bad values are only warnings there: any word about our unit fails
    said = [line for line in (r.stdout + r.stderr).splitlines() if "mambabyte@" in line]
    assert r.returncode == 0 and not said, r.stdout + r.stderr


def load_manifests():
    docs = {}
    for name in sorted(os.listdir(os.path.join(DEPLOY, "k8s"))):
        if os.path.isdir(os.path.join(DEPLOY, "k8s", name)):
            continue
        assert name.endswith(".yaml"), name
        with open(os.path.join(DEPLOY, "k8s", name)) as f:
            for d in yaml.safe_load_all(f):
                assert d["apiVersion"] and d["kind"], name
                if d["kind"] != "Kustomization":
                    assert d["metadata"]["name"], name
                docs.setdefault(d["kind"], []).append((name, d))
    return docs


def test_kubernetes_manifests():
    docs = load_manifests()
    one = {k: v[0][1] for k, v in docs.items()}
    listed = one["Kustomization"]["resources"]
    assert sorted(listed) == sorted(n for v in docs.values() for n, d in v if d["kind"] != "Kustomization")
    for kind in ("Secret", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service", "Ingress",
                 "PodDisruptionBudget"):
        assert kind in one, kind
    config = json.loads(one["ConfigMap"]["data"]["config.json"])
    dep = one["Deployment"]["spec"]
    labels = dep["template"]["metadata"]["labels"]
    assert dep["selector"]["matchLabels"].items() <= labels.items()
    pod = dep["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    assert port == config["port"]
    # probes on /health for start-up, readiness and liveness
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health" and c[probe]["httpGet"]["port"] == "http", probe
    # a GPU per pod and limits on everything
    for part in ("requests", "limits"):
        assert c["resources"][part]["nvidia.com/gpu"] == 1, part
    assert {"cpu", "memory"} <= c["resources"]["limits"].keys()
    # Prometheus finds /metrics on the daemon's port
    ann = dep["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert int(ann["prometheus.io/port"]) == port
    # the grace period covers the preStop pause and the drain, with a margin that is not absurd
    pause = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    grace = pod["terminationGracePeriodSeconds"]
    assert config["shutdown_timeout_s"] + pause + 5 <= grace <= config["shutdown_timeout_s"] + pause + 30, grace
    # the settings come from the ConfigMap, the key from the Secret
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["config"]["configMap"]["name"] == one["ConfigMap"]["metadata"]["name"]
    assert env["MAMBABYTE_CONFIG"]["value"] == mounts["config"] + "/config.json"
    assert env["MAMBABYTE_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == one["Secret"]["metadata"]["name"]
    # saved sessions on a volume every pod shares
    assert mounts["sessions"] == config["session_dir"]
    claim = vols["sessions"]["persistentVolumeClaim"]["claimName"]
    assert claim == one["PersistentVolumeClaim"]["metadata"]["name"]
    assert one["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    # the Service, the PDB and the Ingress find the pods
    svc = one["Service"]
    assert svc["spec"]["selector"].items() <= labels.items() and "sessionAffinity" not in svc["spec"]
    assert one["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ing = one["Ingress"]
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$mambabyte_route"
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == svc["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
    # the controller's snippet defines the hash key and the header, as nginx reads them
    with open(os.path.join(DEPLOY, "k8s/ingress-nginx/controller-patch.yaml")) as f:
        patch = yaml.safe_load(f)["data"]
    with open(os.path.join(DEPLOY, "k8s/ingress-nginx/mambabyte-headers.yaml")) as f:
        headers = yaml.safe_load(f)
    assert patch["proxy-set-headers"] == "{metadata[namespace]}/{metadata[name]}".format(**headers)
    d = tempfile.mkdtemp(prefix="mb-ingress-")
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(f"""pid {d}/pid;
events {{ }}
http {{
{patch["http-snippet"]}
    upstream pods {{ hash {ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"]}; server 127.0.0.1:1; }}
    server {{
        listen 127.0.0.1:{free_port()};
        location / {{ proxy_set_header X-Session-Id "{headers["data"]["X-Session-Id"]}"; proxy_pass http://pods; }}
    }}
}}
""")
    r = subprocess.run([NGINX, "-t", "-p", d, "-c", f"{d}/nginx.conf", "-e", f"{d}/error.log"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # the daemon takes the ConfigMap's settings (a wrong key or value would stop it); the
    # machine's own things (address, model, device) come from flags, which rank above the file
    d = tempfile.mkdtemp(prefix="mb-k8s-")
    path = os.path.join(d, "config.json")
    with open(path, "w") as f:
        f.write(one["ConfigMap"]["data"]["config.json"])
    with Server("--config", path) as srv:
        st, _, h = srv.request("GET", "/health")
        assert st == 200 and daemon_of({k.lower(): v for k, v in h.items()}).endswith(f":{srv.port}")


def dockerfile(name):
    """The instructions of a Dockerfile: (KEYWORD, arguments), continuation lines joined."""
    out, cur = [], ""
    for line in open(os.path.join(DEPLOY, name)):
        line = line.rstrip("\n")
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        word, _, rest = cur.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    return out


def dockerignored():
    pats = []
    for line in open(os.path.join(ROOT, ".dockerignore")):
        line = line.strip()
        if line and not line.startswith("#"):
            pats.append(line)
    return pats


def test_dockerfiles():
    ignored = dockerignored()
    assert ".git" in ignored and "build" in ignored and "sessions" in ignored
    runtime_pkgs = {}
    for name, base_final, must_copy in (("Dockerfile", r"^debian:\$\{DEBIAN\}-slim$", ["mambabyte"]),
                                        ("Dockerfile.cuda", r"^nvidia/cuda:\$\{CUDA_VERSION\}-runtime-",
                                         ["mambabyte", "libmambabyte_cuda.so"])):
        ins = dockerfile(name)
        args = {a.split("=")[0]: a.split("=", 1)[1] for k, a in ins if k == "ARG" and "=" in a}
        froms = [(i, a) for i, (k, a) in enumerate(ins) if k == "FROM"]
        assert len(froms) == 2 and froms[0][1].endswith(" AS build"), (name, froms)
        final = froms[-1][1]
        assert re.match(base_final, final), (name, final)
        if name == "Dockerfile.cuda":
            assert args["CUDA_VERSION"].startswith("13."), args
            assert froms[0][1].startswith("nvidia/cuda:${CUDA_VERSION}-devel-"), froms[0]
        stage = ins[froms[-1][0]:]
        kinds = [k for k, _ in stage]
        for k in ("USER", "HEALTHCHECK", "ENTRYPOINT", "EXPOSE"):
            assert k in kinds, (name, k)
        user = [a for k, a in stage if k == "USER"][-1]
        assert user.split(":")[0] not in ("root", "0"), user
        assert "/health" in [a for k, a in stage if k == "HEALTHCHECK"][0]
        # the binary and (CUDA) its backend land in one folder: the backend is found beside it
        copied = " ".join(a for k, a in stage if k == "COPY" and a.startswith("--from=build"))
        for f in must_copy:
            assert f"/src/build/rel/{f}" in copied, (name, f)
        assert [a for k, a in stage if k == "COPY" and a.startswith("models/")], name
        # every file copied from the context exists and is not left out by .dockerignore
        for k, a in ins:
            if k == "COPY" and not a.startswith("--"):
                for src in a.split()[:-1]:
                    assert os.path.exists(os.path.join(ROOT, src)), (name, src)
                    assert src.rstrip("/").split("/")[0] not in ignored, (name, src)
        install = " ".join(a for k, a in stage if k == "RUN")
        runtime_pkgs[name] = set(re.findall(r"\b(lib[a-z0-9.+-]+)", install.split("apt-get install")[1].split("&&")[0]))
    # the build stage, run here from exactly the files the CPU image copies
    ins = dockerfile("Dockerfile")
    build = ins[:[i for i, (k, _) in enumerate(ins) if k == "FROM"][1]]
    ctx = tempfile.mkdtemp(prefix="mb-docker-build-")
    for k, a in build:
        if k == "COPY":
            src, dst = a.split()
            if os.path.isdir(os.path.join(ROOT, src)):
                shutil.copytree(os.path.join(ROOT, src), os.path.join(ctx, dst))
            else:
                shutil.copy(os.path.join(ROOT, src), os.path.join(ctx, dst))
    make = [a for k, a in build if k == "RUN" and a.startswith("make")][0]
    cmd = make.replace('"$(nproc)"', "2").replace('"$VERSION"', "test")
    r = subprocess.run(cmd, shell=True, cwd=ctx, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    binary = os.path.join(ctx, "build/rel/mambabyte")
    # the libraries it links come from the Debian packages the CPU image installs (the CUDA
    # image installs the same ones under Ubuntu's names)
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    paths = dict(re.findall(r"^\s*(\S+) => (/\S+)", ldd, re.M))
    dyn = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True, check=True).stdout
    wanted = set()
    for lib in (paths[n] for n in re.findall(r"\(NEEDED\).*\[(.+)\]", dyn)):
        owner = subprocess.run(["dpkg", "-S", os.path.realpath(lib)], capture_output=True, text=True)
        if owner.returncode:
            owner = subprocess.run(["dpkg", "-S", lib], capture_output=True, text=True)
        pkg = owner.stdout.split(":")[0]
        if pkg and pkg not in ("libc6", "libgcc-s1", "libstdc++6"):
            wanted.add(pkg)
    assert wanted and wanted <= runtime_pkgs["Dockerfile"], (wanted, runtime_pkgs["Dockerfile"])
    cuda = {p.replace("t64", "") for p in runtime_pkgs["Dockerfile.cuda"]}
    assert wanted <= cuda, (wanted, runtime_pkgs["Dockerfile.cuda"])
    # what it built serves
    r = subprocess.run([binary, "generate", "-m", MODEL, "-p", "hi", "-n", "4", "--device", "cpu"],
                       capture_output=True, timeout=120)
    assert r.returncode == 0 and len(r.stdout) == 4, r
    shutil.rmtree(ctx)


# ---- two daemons behind nginx ----

def test_balancing_and_failover():
    sessions = tempfile.mkdtemp(prefix="mb-shared-sessions-")
    # a daemon's name is what daemon_id says, else <hostname>:<port>; one that could break a
    # header is refused at start
    r = subprocess.run([BIN, "serve", "-m", MODEL, "--port", "0", "--device", "cpu", "--daemon-id", "two words"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "daemon_id must be printable ASCII without spaces" in r.stderr, r
    a = Server("--slots", "8", "--daemon-id", "daemon-a", session_dir=sessions)
    b = Server("--slots", "8", session_dir=sessions)
    lb = None
    try:
        lb = Nginx([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
        lb.start()
        ids = {daemon_of(call(s.port, "GET", "/health")[2]): s for s in (a, b)}
        assert ids.get("daemon-a") is a and ids.get(f"{os.uname().nodename}:{b.port}") is b, ids
        check_spread(lb, ids)
        homes = check_sessions(lb, ids)
        check_streams(lb, a)
        check_failover(lb, a, b, ids, homes)
        b.stop()
    finally:
        if lb:
            lb.stop()
        for s in (a, b):
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
                sys.stderr.write(s.output()[-3000:])


def check_spread(lb, ids):
    """Requests without a session reach both daemons; /health answers through nginx."""
    seen = {}
    for i in range(20):
        st, out, h = call(lb.port, "POST", "/v1/generate", gen_body(b"spread", n=4, seed=i))
        assert st == 200 and "x-session-id" not in h, (st, out)
        seen[daemon_of(h)] = seen.get(daemon_of(h), 0) + 1
    assert set(seen) == set(ids) and min(seen.values()) >= 5, seen
    st, out, _ = call(lb.port, "GET", "/health")
    assert st == 200 and out == {"status": "ok"}, out


def check_sessions(lb, ids):
    """Sessions made through nginx land on both daemons, and each one's requests (by header or
    by path, forks too) always reach the daemon that made it. Returns {session id: daemon}."""
    homes = {}
    for i in range(16):
        st, out, h = call(lb.port, "POST", "/v1/sessions", {"prompt": f"Session {i}:"})
        assert st == 200 and h["x-session-id"] == out["id"], (st, out, h)
        homes[out["id"]] = daemon_of(h)
    assert set(homes.values()) == set(ids), homes  # 16 random ids on one daemon: p = 2^-15
    for sid, home in homes.items():
        for k in range(3):
            st, out, h = call(lb.port, "POST", "/v1/generate", gen_body(b" more", n=8, seed=k),
                              headers={"X-Session-Id": sid})
            assert st == 200 and daemon_of(h) == home and h["x-session-id"] == sid, (sid, st, out, h)
        st, out, h = call(lb.port, "GET", f"/v1/sessions/{sid}")
        assert st == 200 and daemon_of(h) == home and out["n_bytes"] > 3 * 8, (out, h)
    # a fork lives where its source does, and its requests find it there
    for sid, home in list(homes.items())[:4]:
        st, out, h = call(lb.port, "POST", f"/v1/sessions/{sid}/fork", {})
        assert st == 200 and daemon_of(h) == home, (st, out)
        fork = out["id"]
        st, out, h = call(lb.port, "POST", "/v1/generate", gen_body(b"!", n=4), headers={"X-Session-Id": fork})
        assert st == 200 and daemon_of(h) == home, (st, out, h)
        assert call(lb.port, "DELETE", f"/v1/sessions/{fork}")[0] == 200
    return homes


def check_streams(lb, direct):
    """A stream through nginx carries the same events' text as the whole answer straight from a
    daemon, and its first event arrives while the daemon is still writing (no buffering)."""
    body = dict(gen_body(b"It was a dark and stormy night", n=3000, seed=5), stream=True)
    st, whole, _ = call(direct.port, "POST", "/v1/generate", dict(body, stream=False), timeout=300)
    assert st == 200
    c = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=300)
    t0 = time.time()
    c.request("POST", "/v1/generate", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream", r.status
    first = r.readline()
    t_first = time.time() - t0
    rest = r.read()
    t_all = time.time() - t0
    c.close()
    events = parse_sse((first + rest).decode())
    got = b"".join(b64(e["bytes_base64"]) for e in events[:-1] if "bytes_base64" in e)
    assert got == b64(whole["bytes_base64"]), (len(got), len(b64(whole["bytes_base64"])))
    assert events[-2]["finish_reason"] == "length", events[-2]
    assert len(events) > 10, len(events)
    assert t_first < t_all / 2, (t_first, t_all)


def check_failover(lb, a, b, ids, homes):
    """Kills daemon a (SIGKILL: a crash) with streams running on it."""
    name_a, name_b = daemon_of(call(a.port, "GET", "/health")[2]), daemon_of(call(b.port, "GET", "/health")[2])
    on_a = [s for s, home in homes.items() if home == name_a]
    saved, unsaved = on_a[0], on_a[1] if len(on_a) > 1 else None
    st, out, h = call(lb.port, "POST", f"/v1/sessions/{saved}/save", {})
    assert st == 200 and out["saved"] is True and daemon_of(h) == name_a, (st, out)
    # what the saved session gives next, had nothing happened: on a fork, straight at a
    fork = a.post(f"/v1/sessions/{saved}/fork", {})["id"]
    want = [b64(a.post("/v1/generate", dict(gen_body(p, n=32, seed=9), session=fork))["bytes_base64"])
            for p in (b" and then", b" again")]
    # streams in flight: some on a, which die with it
    results = []

    def stream(i):
        try:
            st, text, _ = call(lb.port, "POST", "/v1/generate",
                               dict(gen_body(b"in flight", n=4000, seed=i), stream=True), timeout=120)
            results.append(st == 200 and text.endswith("data: [DONE]\n\n"))
        except (OSError, http.client.HTTPException):
            results.append(False)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    a.proc.kill()
    a.proc.wait()
    for t in threads:
        t.join(150)
    lost = results.count(False)
    print(f"     {lost} of 4 streams in flight died with the daemon")
    assert len(results) == 4 and lost <= 2, results  # at most those on a (least_conn: 2 of 4)
    # every request without a session now succeeds, on b
    for i in range(10):
        st, out, h = call(lb.port, "POST", "/v1/generate", gen_body(b"after", n=4, seed=i))
        assert st == 200 and daemon_of(h) == name_b, (st, out, h)
    # the saved session continues on b with the bytes a would have given
    for p, w in zip((b" and then", b" again"), want):
        st, out, h = call(lb.port, "POST", "/v1/generate", gen_body(p, n=32, seed=9), headers={"X-Session-Id": saved})
        assert st == 200 and daemon_of(h) == name_b, (st, out, h)
        assert b64(out["bytes_base64"]) == w, (b64(out["bytes_base64"]), w)
    # one a never saved is gone, and the answer says so
    if unsaved:
        st, out, h = call(lb.port, "POST", "/v1/generate", gen_body(b"x", n=4), headers={"X-Session-Id": unsaved})
        assert st == 404 and out["error"]["code"] == "session_not_found", (st, out)
        assert "save" in out["error"]["message"], out
    # sessions that lived on b never noticed
    for sid, home in homes.items():
        if home == name_b:
            st, out, h = call(lb.port, "GET", f"/v1/sessions/{sid}")
            assert st == 200 and daemon_of(h) == name_b, (st, out)
    st, out, _ = call(lb.port, "GET", "/health")
    assert st == 200, out
    assert ids[name_b] is b


def test_graceful_stop():
    """SIGTERM on a daemon with a stream running through nginx: the stream ends whole, and
    while the daemon drains (it answers 503 to new work, which nginx then tries on the other)
    every new request without a session is served by the other one; the stopped daemon exits
    cleanly."""
    sessions = tempfile.mkdtemp(prefix="mb-shared-sessions-")
    x = Server("--slots", "8", session_dir=sessions)
    y = Server("--slots", "8", session_dir=sessions)
    lb = None
    try:
        lb = Nginx([f"127.0.0.1:{x.port}", f"127.0.0.1:{y.port}"])
        lb.start()
        c = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=120)
        body = dict(gen_body(b"a long one", n=4000, seed=3), stream=True)
        c.request("POST", "/v1/generate", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200, r.status
        first = r.readline()
        draining = x if r.getheader("X-Mambabyte-Daemon").endswith(f":{x.port}") else y
        other = y if draining is x else x
        draining.proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        st, out, _ = call(draining.port, "GET", "/health")
        assert st == 503 and out["status"] == "shutting_down", (st, out)  # still draining
        # two more streams, which go to the other daemon, make the draining one the least busy
        # in nginx's eyes: new requests then meet its 503 first, and nginx tries the other
        busy = []

        def stream(i):
            busy.append(call(lb.port, "POST", "/v1/generate", dict(gen_body(b"busy", n=4000, seed=i), stream=True),
                             timeout=120))

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.1)
        served = set()
        for i in range(10):
            st, out, h = call(lb.port, "POST", "/v1/generate", gen_body(b"meanwhile", n=4, seed=i))
            assert st == 200, (st, out)
            served.add(daemon_of(h))
        assert served == {daemon_of(call(other.port, "GET", "/health")[2])}, served
        events = parse_sse((first + r.read()).decode())
        c.close()
        for t in threads:
            t.join(120)
        assert [b[0] for b in busy] == [200, 200] and all(b[1].endswith("data: [DONE]\n\n") for b in busy), busy
        assert re.search(r"POST /v1/generate status=503", draining.output()), "nginx never met the drain's 503"
        assert events[-2]["finish_reason"] == "length" and events[-2]["usage"]["completion_bytes"] == 4000, events[-2]
        assert draining.proc.wait(60) == 0, draining.output()[-3000:]
        other.stop()
    finally:
        if lb:
            lb.stop()
        for s in (x, y):
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()


if __name__ == "__main__":
    assert os.path.exists(NGINX), "nginx is not installed (tools/deps.sh --test installs it)"
    run([test_nginx_config, test_systemd_unit, test_kubernetes_manifests, test_dockerfiles,
         test_balancing_and_failover, test_graceful_stop])
