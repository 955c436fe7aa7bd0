"""Builds and runs the libFuzzer targets of tests/fuzz/ (clang, ASan + UBSan), and measures their line coverage.

Each target is one harness (fuzz_<name>.c, or fuzz_rx.c built once per encapsulation) linked with
every unit of csrc/ (csrc/build.py's UNITS). The seed corpus is tests/fuzz/corpus/<target>/ (written
by make_corpus.py; crash inputs found are kept there as regression seeds). A run never writes into
the committed corpus: new inputs go to a work directory, the seeds are read from the second.

By hand, from the project root::

    python3 tests/fuzz/fuzzers.py build                       # all targets into build/fuzz/
    python3 tests/fuzz/fuzzers.py run rx_plan --seconds 600   # work corpus build/fuzz/work/rx_plan
    python3 tests/fuzz/fuzzers.py cover rx_plan               # line coverage of csrc/ by that corpus
    build/fuzz/rx_plan crash-...                              # replay one input

Used by tests/fuzz/test_fuzz.py for the bounded run in the test suite.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"
CORPUS = HERE / "corpus"
DEFAULT_OUT = ROOT / "build" / "fuzz"

# target -> (harness, extra compiler flags)
TARGETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rx_vxlan": ("fuzz_rx.c", ("-DFUZZ_ENCAP=OVL_ENCAP_VXLAN",)),
    "rx_gre": ("fuzz_rx.c", ("-DFUZZ_ENCAP=OVL_ENCAP_GRE",)),
    "rx_plan": ("fuzz_rx_plan.c", ()),
    "rx_super": ("fuzz_rx_super.c", ()),
    "offload": ("fuzz_offload.c", ()),
    "tap_tx": ("fuzz_tap_tx.c", ()),
    "vlan": ("fuzz_vlan.c", ()),
    "pmtu": ("fuzz_pmtu.c", ()),
    "mss": ("fuzz_mss.c", ()),
}
# The functions each target is for (their lines are its "focus" coverage; static ones without the file name).
_RX = ("ovl_rx_load", "ovl_rx_process", "ovl_rx_result", "ovl_parse", "ovl_decap", "frame_vlan", "vlan_of_id",
       "remote_find", "ovl_rx_plan", "ovl_rx_plan_write", "plan_frame", "plan_add", "plan_iov")  # fmt: skip
_TSO = ("ovl_offload_frame", "vnet_read", "l3_offset", "tso_prepare", "tso_write", "csum_complete")
_TX = ("ovl_tx_load", "ovl_tx_process", "ovl_tx_packet", "emit", "tx_frame_sums", "ovl_flow_hash", "fnv",
       "outer_push", "ip4_patch", "udp_patch", "vxlan_push", "gre_push", "frame_vlan", "sum16")  # fmt: skip
FOCUS: dict[str, tuple[str, ...]] = {
    "rx_vxlan": (*_RX, "vxlan_parse"),
    "rx_gre": (*_RX, "gre_parse", "ip4_header_len", "ovl_checksum", "sum16"),
    "rx_plan": (
        "ovl_rx_plan",
        "ovl_rx_plan_write",
        "l3_offset",
        "co_parse",
        "co_same_flow",
        "co_fits",
        "co_flush",
        "co_start",
        "co_append",
        "co_step",
        "plan_frame",
        "plan_add",
        "plan_iov",
        "vnet_write",
    ),
    "rx_super": (
        "ovl_dp_set_rx_super",
        "rx_super_take",
        "super_parse",
        "super_split",
        "rx_csum_fix",
        "co_end",
        "tso_prepare",
        "tso_seg_hdr",
        "ovl_rx_plan",
    ),
    "offload": _TSO,
    "pmtu": (
        "ovl_pmtu_reply",
        "v4_reply_due",
        "v6_reply_due",
        "ovl_ip4_fragment",
        "tx_copy",
        "tx_fits",
        "pmtu_too_big",
        "pmtu_allow",
        "job_fragment",
        "ovl_tx_fragment",
        "may_fragment",
    ),
    "tap_tx": ("tx_fill_offloaded", *_TSO, *_TX),
    "vlan": (
        *_TX,
        "ovl_encap",
        "outer_template",
        "ovl_rx_process",
        "ovl_rx_result",
        "vlan_of_id",
        "vxlan_parse",
        "gre_parse",
    ),
    "mss": (
        "ovl_mss_clamp",
        "find_syn",
        "csum_replace",
        "ovl_dp_mss_limit",
        "tunnel_l3_mtu",
        "syn_l2",
        "mss_tx",
        "mss_rx",
        "l3_offset",
        "ip4_header_len",
    ),
}
SANITIZE = ("-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer")
CFLAGS = ("-g", "-O1", "-Wall", "-Wextra")
COVERAGE = ("-fprofile-instr-generate", "-fcoverage-mapping")
# What a run that found something prints (besides a non-zero exit).
REPORTS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer",
           "ERROR: libFuzzer", "invariant failed", "deadly signal")  # fmt: skip
RUN_ENV = {"ASAN_OPTIONS": "quarantine_size_mb=64:detect_leaks=1", "UBSAN_OPTIONS": "print_stacktrace=1"}


def units() -> list[Path]:
    """The C units of the module, as csrc/build.py lists them."""
    spec = importlib.util.spec_from_file_location("ovl_csrc_build", CSRC / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return [CSRC / u for u in mod.UNITS]


def clang() -> str | None:
    """Path of clang, or None."""
    return shutil.which(os.environ.get("CC_FUZZ", "clang"))


def build(target: str, out: Path, coverage: bool = False) -> Path:
    """Compile target (with coverage instrumentation if asked) into out; returns the binary. Raises on errors."""
    cc = clang()
    if cc is None:
        raise FileNotFoundError("clang not found (apt-get install clang libclang-rt-14-dev)")
    harness, extra = TARGETS[target]
    out.mkdir(parents=True, exist_ok=True)
    binary = out / (f"cov-{target}" if coverage else target)
    cmd = [cc, *CFLAGS, *SANITIZE, *(COVERAGE if coverage else ()), *extra, f"-I{CSRC}", f"-I{HERE}"]
    cmd += [str(HERE / harness), *map(str, units()), "-o", str(binary)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"building {target} failed:\n{' '.join(cmd)}\n{res.stderr}")
    return binary


@dataclass
class Run:
    """The outcome of one fuzzing run."""

    returncode: int
    output: str  # libFuzzer's stderr
    stats: dict[str, int]  # stat::* of -print_final_stats
    cov: int | None  # cov: and ft: of the last status line
    ft: int | None
    corpus: int | None  # inputs in the corpus at the end

    @property
    def reports(self) -> list[str]:
        """Lines of the output that report a finding."""
        return [line for line in self.output.splitlines() if any(r in line for r in REPORTS)]

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.reports

    def summary(self) -> str:
        """One line: executions, exec/s, coverage, corpus size."""
        s = self.stats
        return (f"execs {s.get('number_of_executed_units', 0)} exec/s {s.get('average_exec_per_sec', 0)} "
                f"cov {self.cov} ft {self.ft} corpus {self.corpus} peak_rss_mb {s.get('peak_rss_mb', 0)}")  # fmt: skip


def parse_output(returncode: int, output: str) -> Run:
    """Stats and the last coverage figures of a libFuzzer run's stderr."""
    stats = {m[1]: int(m[2]) for m in re.finditer(r"^stat::(\w+):\s+(\d+)", output, re.M)}
    status = re.findall(r"^#\d+\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", output, re.M)
    cov, ft, corp = (int(x) for x in status[-1]) if status else (None, None, None)
    return Run(returncode, output, stats, cov, ft, corp)


def run(binary: Path, target: str, work: Path, seconds: int, extra: tuple[str, ...] = ()) -> Run:
    """Fuzz for seconds: new inputs into work/corpus, the committed seeds read as well, crashes into work/."""
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    cmd = [str(binary), f"-max_total_time={seconds}", "-print_final_stats=1", "-timeout=30", "-rss_limit_mb=2048",
           f"-artifact_prefix={work}/", *extra, str(corpus), str(CORPUS / target)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **RUN_ENV}, timeout=seconds + 300)
    return parse_output(res.returncode, res.stderr)


def coverage(target: str, out: Path, corpora: list[Path]) -> dict[str, tuple[int, int]]:
    """Line coverage of the csrc/ units by running every input of corpora once: unit -> (covered, lines),
    TOTAL for all units and FOCUS for the functions of FOCUS[target]."""
    binary = build(target, out, coverage=True)
    raw, data = out / f"{target}.profraw", out / f"{target}.profdata"
    env = {**os.environ, **RUN_ENV, "LLVM_PROFILE_FILE": str(raw)}
    dirs = [str(d) for d in corpora if d.is_dir()]
    subprocess.run([str(binary), "-runs=0", *dirs], env=env, capture_output=True, check=True)
    subprocess.run(["llvm-profdata", "merge", "-sparse", str(raw), "-o", str(data)], check=True)
    rep = subprocess.run(["llvm-cov", "report", str(binary), f"-instr-profile={data}", *map(str, units())],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    result: dict[str, tuple[int, int]] = {}
    for line in rep.splitlines():
        cols = line.split()
        if cols and (cols[0].endswith(".c") or cols[0] == "TOTAL"):
            # Filename Regions Missed Cover Functions Missed Executed Lines Missed Cover ...
            lines, missed = int(cols[7]), int(cols[8])
            result[Path(cols[0]).name] = (lines - missed, lines)
    funcs = subprocess.run(["llvm-cov", "report", "-show-functions", str(binary), f"-instr-profile={data}",
                            *map(str, units())], capture_output=True, text=True, check=True).stdout  # fmt: skip
    focus = set(FOCUS[target])
    covered = total = 0
    for line in funcs.splitlines():
        cols = line.split()
        # Name Regions Miss Cover Lines Miss Cover ...; a static function is "file.c:name"
        if len(cols) >= 7 and cols[0].rsplit(":", 1)[-1] in focus and cols[4].isdigit():
            covered += int(cols[4]) - int(cols[5])
            total += int(cols[4])
    result["FOCUS"] = (covered, total)
    return result


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="build and work directory (default build/fuzz)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile targets")
    b.add_argument("targets", nargs="*", help=f"of {', '.join(TARGETS)} (default all)")
    r = sub.add_parser("run", help="build and fuzz one target")
    r.add_argument("target", choices=TARGETS)
    r.add_argument("--seconds", type=int, default=60)
    r.add_argument("libfuzzer_args", nargs="*", help="more libFuzzer flags (after --)")
    c = sub.add_parser("cover", help="line coverage of csrc/ by a target's corpora (seeds + work)")
    c.add_argument("targets", nargs="*", help="as for build")
    a = ap.parse_args(argv)
    unknown = [t for t in getattr(a, "targets", []) if t not in TARGETS]
    if unknown:
        ap.error(f"unknown targets {unknown}; there are {', '.join(TARGETS)}")
    if a.cmd == "build":
        for t in a.targets or TARGETS:
            print(build(t, a.out))
    elif a.cmd == "run":
        res = run(build(a.target, a.out), a.target, a.out / "work" / a.target, a.seconds, tuple(a.libfuzzer_args))
        print(res.output[-3000:], file=sys.stderr)
        print(f"{a.target}: {res.summary()}")
        return 0 if res.ok else 1
    else:
        for t in a.targets or TARGETS:
            cov = coverage(t, a.out, [CORPUS / t, a.out / "work" / t / "corpus"])
            per = ", ".join(f"{u} {c}/{n}" for u, (c, n) in cov.items() if u.endswith(".c") and c)
            (c_all, n_all), (c_f, n_f) = cov["TOTAL"], cov["FOCUS"]
            print(f"{t}: lines of its functions {c_f}/{n_f} ({100 * c_f / max(n_f, 1):.1f} %); "
                  f"of csrc/ {c_all}/{n_all} ({100 * c_all / max(n_all, 1):.1f} %): {per}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
