#!/usr/bin/env python3
"""Every object the chart renders is valid Kubernetes, and the pods keep their security shape.

1. Schema: each object is validated offline with kubernetes-validate (strict: unknown fields
   fail) against every Kubernetes version given with --kube. Only the Prometheus Operator kinds
   (ServiceMonitor, PodMonitor, PrometheusRule), whose schemas are not Kubernetes', are skipped,
   by name, and reported.
2. Shape: the controller runs non-root with a read-only root filesystem and no capability; the
   speaker uses the host network with ClusterFirstWithHostNet DNS, keeps only NET_RAW (and
   NET_ADMIN when it carries connections across moves), declares
   its membership port as UDP, takes its node name from the downward API and mounts the
   membership key Secret.

usage: validate_manifests.py --kube 1.25.0 [--kube 1.30.0 ...] FILE...
"""
import argparse
import sys

import kubernetes_validate
import yaml

SKIPPED_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"),
                 ("monitoring.coreos.com/v1", "PodMonitor"),
                 ("monitoring.coreos.com/v1", "PrometheusRule")}


# Kinds the chart renders only from a Kubernetes version on (templates/admission-policy.yaml):
# checked against the schemas of that version and later.
SINCE = {("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): (1, 30),
         ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"): (1, 30)}


def version_tuple(text):
    return tuple(int(p) for p in text.split(".")[:2])


def name_of(doc):
    return f'{doc.get("kind")} {doc.get("metadata", {}).get("name")}'


def env_map(container):
    return {e["name"]: e for e in container.get("env") or []}


def check_controller(doc, problems):
    pod = doc["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == "controller"]
    sc, psc = c.get("securityContext") or {}, pod.get("securityContext") or {}
    if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
        problems.append(f"{name_of(doc)}: the controller must run as non-root")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{name_of(doc)}: the controller needs readOnlyRootFilesystem")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{name_of(doc)}: the controller needs allowPrivilegeEscalation: false")
    caps = sc.get("capabilities") or {}
    if caps.get("drop") != ["ALL"] or caps.get("add"):
        problems.append(f"{name_of(doc)}: the controller must drop ALL capabilities and add none, has {caps}")
    if pod.get("hostNetwork"):
        problems.append(f"{name_of(doc)}: the controller must not use the host network")
    env = env_map(c)
    for var in ("POD_NAME", "FERROLB_NAMESPACE", "FERROLB_LEADER_ELECTION", "FERROLB_METRICS_ADDR"):
        if var not in env:
            problems.append(f"{name_of(doc)}: environment variable {var} missing")
    if "--state-dir" in (c.get("args") or []) or "FERROLB_STATE_DIR" in env:
        problems.append(f"{name_of(doc)}: --state-dir is for standalone mode, never in the chart")


def check_speaker(doc, problems, secrets):
    pod = doc["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == "speaker"]
    if pod.get("hostNetwork") is not True or pod.get("dnsPolicy") != "ClusterFirstWithHostNet":
        problems.append(f"{name_of(doc)}: the speaker needs hostNetwork and dnsPolicy ClusterFirstWithHostNet")
    sc = c.get("securityContext") or {}
    caps = sc.get("capabilities") or {}
    carrying = env_map(c).get("FERROLB_CARRY_CONNECTIONS", {}).get("value") == "true"
    wanted = ["NET_RAW", "NET_ADMIN"] if carrying else ["NET_RAW"]
    if caps.get("drop") != ["ALL"] or caps.get("add") != wanted:
        problems.append(f"{name_of(doc)}: the speaker keeps exactly {wanted} (drop ALL; NET_ADMIN only to carry connections), has {caps}")
    if sc.get("privileged") or sc.get("allowPrivilegeEscalation") is not False or sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{name_of(doc)}: the speaker must not be privileged nor escalate, with a read-only root filesystem")
    if c.get("args", [None])[0] != "run":
        problems.append(f"{name_of(doc)}: the speaker's first argument must be `run`, is {c.get('args')}")
    env = env_map(c)
    node = env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if node != "spec.nodeName":
        problems.append(f"{name_of(doc)}: NODE_NAME must come from spec.nodeName (downward API)")
    if not any(p.get("protocol") == "UDP" and p.get("name") == "membership" for p in c.get("ports") or []):
        problems.append(f"{name_of(doc)}: the membership port must be declared as UDP")
    key_file = env.get("FERROLB_MEMBERSHIP_KEY_FILE", {}).get("value", "")
    mounts = {m["name"]: m for m in c.get("volumeMounts") or []}
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mount = mounts.get("membership-key")
    if not mount or not key_file.startswith(mount["mountPath"] + "/"):
        problems.append(f"{name_of(doc)}: the key file {key_file!r} must lie in the membership-key mount")
    secret = volumes.get("membership-key", {}).get("secret", {}).get("secretName")
    if secrets is not None and secret not in secrets:
        problems.append(f"{name_of(doc)}: mounts Secret {secret}, which the chart does not render")
    tolerated = {t.get("key") for t in pod.get("tolerations") or []}
    if "node-role.kubernetes.io/control-plane" not in tolerated:
        problems.append(f"{name_of(doc)}: the speaker must tolerate control-plane nodes")


def check_secret(doc, problems):
    import base64
    import re
    text = base64.b64decode(doc.get("data", {}).get("key", "")).decode()
    lines = [l for l in text.splitlines() if l.strip() and not l.startswith("#")]
    if not lines or not all(re.fullmatch(r"[0-9a-f]{64}", l.strip()) for l in lines):
        problems.append(f"{name_of(doc)}: key must be lines of 64 hex digits, is {text!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kube", action="append", required=True, help="Kubernetes version, e.g. 1.30.0")
    parser.add_argument("--existing-secret", help="a Secret the user provides (not rendered)")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    problems = []
    for path in args.files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
        if args.existing_secret:
            secrets.add(args.existing_secret)
        counts = {"validated": 0, "skipped": 0}
        before = len(problems)
        # A check over no objects passes whatever the chart does: an empty file is a failure, and
        # a rendered chart (anything but CRDs) must hold the two workloads whose shape is checked.
        if not docs:
            problems.append(f"{path}: no objects (a failed or empty render?)")
        elif any(d.get("kind") != "CustomResourceDefinition" for d in docs):
            for kind, suffix in (("Deployment", "-controller"), ("DaemonSet", "-speaker")):
                found = [d for d in docs if d.get("kind") == kind]
                if len(found) != 1 or not found[0]["metadata"]["name"].endswith(suffix):
                    names = [d["metadata"]["name"] for d in found]
                    problems.append(f"{path}: expected one {kind} named *{suffix} to check the shape of, found {names}")
        for doc in docs:
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key in SKIPPED_KINDS:
                counts["skipped"] += 1
                print(f"  skip {name_of(doc)}: {key[0]} has no offline Kubernetes schema")
                continue
            for version in args.kube:
                if version_tuple(version) < SINCE.get(key, (0, 0)):
                    continue
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as err:
                    at = ".".join(str(p) for p in err.path)
                    problems.append(f"{path}: {name_of(doc)} (Kubernetes {version}) at {at or '<root>'}: {err.message}")
                except kubernetes_validate.SchemaNotFoundError:
                    problems.append(f"{path}: {name_of(doc)}: {key[0]} {key[1]} is not a Kubernetes {version} kind")
            counts["validated"] += 1
            if doc["kind"] == "Deployment" and doc["metadata"]["name"].endswith("-controller"):
                check_controller(doc, problems)
            elif doc["kind"] == "DaemonSet" and doc["metadata"]["name"].endswith("-speaker"):
                check_speaker(doc, problems, secrets)
            elif doc["kind"] == "Secret":
                check_secret(doc, problems)
        verdict = "all valid" if len(problems) == before else f"{len(problems) - before} problem(s)"
        print(f"  {path}: {counts['validated']} objects checked against Kubernetes {', '.join(args.kube)} "
              f"(strict): {verdict}; {counts['skipped']} skipped")
    for p in problems:
        print(f"  FAIL {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
