#!/usr/bin/env python3
"""The chart's RBAC grants exactly what the code calls: no more, no less.

Reads rendered chart output (one or more multi-document YAML files), follows each
RoleBinding/ClusterRoleBinding to the component whose ServiceAccount it binds, and compares the
granted (component, scope, apiGroup, resource, verb) set with EXPECTED below. Also refuses
wildcards, nonResourceURLs, unbound roles and Roles outside the release namespace.

Keep EXPECTED in step with the code: a new API call there needs a line here and in the template.

usage: check_rbac.py --namespace NS --controller-sa NAME --speaker-sa NAME FILE...
"""
import argparse
import sys

import yaml

CLUSTER, NAMESPACE = "cluster-wide", "release namespace"


def grants(component, scope, group, resource, *verbs):
    return {(component, scope, group, resource, verb) for verb in verbs}


EXPECTED = set().union(
    # controller/src/kubernetes.rs: watch Services, write status and the pool annotation.
    grants("controller", CLUSTER, "", "services", "list", "watch", "patch"),
    grants("controller", CLUSTER, "", "services/status", "patch"),
    # Namespace labels for serviceAllocation.namespaceSelectors.
    grants("controller", CLUSTER, "", "namespaces", "list", "watch"),
    # ferrolb_daemon::kubernetes::Events on Services (events.k8s.io/v1): create only.
    grants("controller", CLUSTER, "events.k8s.io", "events", "create"),
    # Pools live in the release namespace (--namespace).
    grants("controller", NAMESPACE, "metallb.io", "ipaddresspools", "list", "watch"),
    grants("controller", NAMESPACE, "metallb.io", "ipaddresspools/status", "patch"),
    # controller/src/leader.rs: get_opt, create, replace.
    grants("controller", NAMESPACE, "coordination.k8s.io", "leases", "get", "create", "update"),
    # The speaker: what the election and announcement decisions read.
    grants("speaker", CLUSTER, "", "services", "list", "watch"),
    grants("speaker", CLUSTER, "", "nodes", "list", "watch"),
    grants("speaker", CLUSTER, "discovery.k8s.io", "endpointslices", "list", "watch"),
    grants("speaker", CLUSTER, "events.k8s.io", "events", "create"),
    grants("speaker", NAMESPACE, "metallb.io", "ipaddresspools", "list", "watch"),
    grants("speaker", NAMESPACE, "metallb.io", "l2advertisements", "list", "watch"),
    # The speaker pods (FERROLB_SPEAKER_SELECTOR): the nodes the quorum counts.
    grants("speaker", NAMESPACE, "", "pods", "list", "watch"),
    # list (this node's, at start), watch, create, patch (ownership taken over), delete.
    grants("speaker", NAMESPACE, "metallb.io", "servicel2statuses",
           "list", "watch", "create", "patch", "delete"),
    # ServiceL2Status carries only status, and its CRD has the status subresource:
    # speaker/src/kubernetes.rs creates the object, then patch_status.
    grants("speaker", NAMESPACE, "metallb.io", "servicel2statuses/status", "patch"),
)

# Verbs that may be narrowed to one object by resourceNames, and to which name.
NARROWED = {("controller", "coordination.k8s.io", "leases", "get"): "lease",
            ("controller", "coordination.k8s.io", "leases", "update"): "lease"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--controller-sa", required=True)
    parser.add_argument("--speaker-sa", required=True)
    parser.add_argument("--lease", required=True, help="the leader-election Lease name")
    parser.add_argument("--quiet", action="store_true", help="print only the totals and failures")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    docs = []
    for path in args.files:
        with open(path) as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d["kind"] in ("Role", "ClusterRole")}
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    accounts = {args.controller_sa: "controller", args.speaker_sa: "speaker"}
    problems = []
    granted = set()
    bound = set()

    for b in bindings:
        where = f'{b["kind"]} {b["metadata"]["name"]}'
        ns = b["metadata"].get("namespace")
        ref = b["roleRef"]
        role_ns = ns if ref["kind"] == "Role" else None
        key = (ref["kind"], role_ns, ref["name"])
        role = roles.get(key)
        if role is None:
            problems.append(f"{where}: refers to {ref['kind']} {ref['name']}, which the chart does not render")
            continue
        bound.add(key)
        if b["kind"] == "RoleBinding" and ns != args.namespace:
            problems.append(f"{where}: in namespace {ns}, not the release namespace {args.namespace}")
        subjects = b.get("subjects") or []
        if len(subjects) != 1 or subjects[0].get("kind") != "ServiceAccount":
            problems.append(f"{where}: must bind exactly one ServiceAccount, binds {subjects}")
            continue
        subject = subjects[0]
        component = accounts.get(subject["name"])
        if component is None or subject.get("namespace") != args.namespace:
            problems.append(f"{where}: binds {subject.get('namespace')}/{subject['name']}, not a FerroLB ServiceAccount")
            continue
        scope = CLUSTER if b["kind"] == "ClusterRoleBinding" else NAMESPACE
        for i, rule in enumerate(role.get("rules") or []):
            rwhere = f"{ref['kind']} {ref['name']} rule {i + 1}"
            if rule.get("nonResourceURLs"):
                problems.append(f"{rwhere}: nonResourceURLs {rule['nonResourceURLs']} (none are needed)")
            for field in ("apiGroups", "resources", "verbs"):
                if "*" in (rule.get(field) or []):
                    problems.append(f"{rwhere}: wildcard in {field}")
            names = rule.get("resourceNames") or []
            for group in rule.get("apiGroups") or []:
                for resource in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        granted.add((component, scope, group, resource, verb))
                        narrowed = NARROWED.get((component, group, resource, verb))
                        if narrowed == "lease" and names != [args.lease]:
                            problems.append(f"{rwhere}: {verb} {resource} should be limited to resourceNames [{args.lease}], is {names}")
                        elif narrowed is None and names:
                            problems.append(f"{rwhere}: unexpected resourceNames {names} on {verb} {resource}")

    for key in roles:
        if key not in bound:
            problems.append(f"{key[0]} {key[2]}: rendered but bound to nobody")

    print(f"  RBAC: {len(granted)} grants rendered, {len(EXPECTED)} expected")
    for g in sorted(granted - EXPECTED):
        problems.append("granted but not needed: {} {}: {}/{} {}".format(g[0], g[1], g[2] or "core", g[3], g[4]))
    for g in sorted(EXPECTED - granted):
        problems.append("needed but not granted: {} {}: {}/{} {}".format(g[0], g[1], g[2] or "core", g[3], g[4]))
    if problems:
        for p in problems:
            print(f"  FAIL {p}")
        return 1
    if args.quiet:
        return 0
    for component in ("controller", "speaker"):
        for scope in (CLUSTER, NAMESPACE):
            rows = sorted({(g, r) for (c, s, g, r, _) in granted if c == component and s == scope})
            for group, resource in rows:
                verbs = sorted(v for (c, s, g, r, v) in granted
                               if (c, s, g, r) == (component, scope, group, resource))
                print(f"    ok {component:10} {scope:17} {(group or 'core') + '/' + resource:36} {','.join(verbs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
