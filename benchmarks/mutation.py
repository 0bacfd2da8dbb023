"""Mutation testing of the core modules with cosmic-ray: which planted bugs the tests catch.

    pip install cosmic-ray==8.7.0
    python -m benchmarks.mutation --workers 2 --out benchmarks/results/mutation.json
    python -m benchmarks.mutation --modules batcher --workers 1     # one module
    python -m benchmarks.mutation --modules server --recheck OLD.json --unit-only   # its survivors, now

Why cosmic-ray: it mutates the source file in place and runs an ordinary test command per
mutant, so it works with this repository's layout (service/ installed as polypstream) where
tools that copy the sources into a folder of their own (mutmut 3) would test the installed,
unmutated package. Each worker mutates its own copy of the working tree (tracked and untracked
files, not the ignored ones), made importable as `polypstream` through a symlink on PYTHONPATH, so
that workers never see each other's mutants.

What is mutated: every function of batcher, scores, evaluate, runner, sources, gpu, alerts,
video_eval, security, stats, memory, wire, pipeline and view; the server's frame path (reading,
checking, decoding, handing over and answering frames, not its start-up); the live view's
sign-in and routes (ui); the regions, score floor and tracker of postprocess (not the overlay's
colours and label placement); the JPEG/PNG header checks, decoding and `Reopening` of capture
(its video and network sources are tested by integration tests, too slow to run for every
mutant). Each
module's mutants run against its tests (`TESTS`: unit tests, and integration tests for security,
ui and server), stopping at the first failure. Operators: all of cosmic-ray's core set except
replacing an arithmetic operator with `**`, `<<`, `>>`, `^` or `%` (on this code's floats and
sizes those are type errors or absurd values, killed by any test that runs the line; they would
only inflate the score), and nothing inside a type annotation (never evaluated under
`from __future__ import annotations`). Takes hours on 2 cores (the server alone about two: its
integration tests take 15 s a mutant).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Queue

ROOT = Path(__file__).resolve().parent.parent

# module -> (its unit tests, the functions mutated: None for all)
TESTS: dict[str, tuple[list[str], set[str] | None]] = {
    "batcher": (["tests/unit/test_batcher.py"], None),
    "postprocess": (  # regions, the score floor and the tracker; not the overlay's drawing
        ["tests/unit/test_postprocess.py"],
        {
            "probability_to_mask",
            "min_region_area",
            "find_polyps",
            "locate_polyps",
            "_scale_box",
            "_Track",
            "__init__",
            "update",
        },
    ),
    "scores": (["tests/unit/test_scores.py"], None),
    "evaluate": (["tests/unit/test_evaluate.py"], None),
    "runner": (["tests/unit/test_runner.py", "tests/unit/test_packaging.py"], None),
    "sources": (["tests/unit/test_sources.py"], None),
    "gpu": (["tests/unit/test_gpu.py"], None),
    "alerts": (["tests/unit/test_alerts.py"], None),
    "video_eval": (["tests/unit/test_video_eval.py"], None),  # the clinical numbers: sensitivity, delay, false alarms
    "security": (["tests/integration/test_security.py"], None),  # TLS, mTLS and the token on the gRPC port
    "stats": (["tests/unit/test_stats.py"], None),  # the percentiles every summary and benchmark reports
    "memory": (["tests/unit/test_memory.py"], None),  # what frames may hold: no client starves the others
    "wire": (["tests/unit/test_wire.py"], None),
    "pipeline": (  # a frame's way: batch, regions, tracks, alerts, masks, timings, metrics
        ["tests/unit/test_pipeline.py", "tests/unit/test_pipeline_results.py"],
        None,
    ),
    "server": (  # the gRPC layer: frames read, checked, decoded, handed over in order, answered in order
        [
            "tests/unit/test_stream_rules.py",
            "tests/unit/test_segment_call.py",
            "tests/unit/test_lanes.py",
            "tests/unit/test_memory.py",
            "tests/unit/test_server_messages.py",
            "tests/integration/test_server.py",
        ],
        {
            "decode_frame_image",
            "result_to_proto",
            "_cut",
            "check",
            "decode_size",
            "frame_sizes",
            "frame_cost",
            "heavy",
            "of",
            "release",
            "_read",
            "_write_answers",
            "ticket",
            "run",
            "settle",
            "deliver",
            "deliver_threadsafe",
            "Segment",
            "_admit",
            "until_draining",
            "start_draining",
            "answer_invalid",
            "_to_proto",
            "start_frame",
            "_decode_and_hand_over",
            "hand_over",
            "_decoded",
            "decode_pool_for",
            "_decode",
            "_submit",
        },
    ),
    "view": (["tests/unit/test_view.py"], None),  # the live view's streams, pictures and viewers
    "ui": (  # the live view's sign-in: the token, its cookie and the routes behind them
        ["tests/integration/test_live_view.py"],
        {"do_GET", "do_POST", "_allowed", "cookie_value"},
    ),
    "client": (  # Stream and SourceWatch: carrying a stream or a watch over a server that goes away; keep_up
        ["tests/unit/test_client_stream.py"],
        {
            "__iter__",
            "_calls",
            "_feed",
            "_room_in",
            "_meanwhile",
            "answered",
            "seek_server",
            "wait_for_server",
            "_outage_words",
            "cancel",
            "_read",
            "_prune",
            "take",
            "forget_dropped",
            "ended",
        },
    ),
    "capture": (
        ["tests/unit/test_capture.py", "tests/unit/test_reopening.py"],
        {
            "endless",
            "__iter__",
            "_arrived",
            "_reopened",
            "reopens",
            "is_jpeg",
            "is_png",
            "jpeg_header",
            "check_jpeg_scans",
            "image_size",
            "jpeg_decoded_size",
            "_jpeg_reduction",
            "_check_size",
            "decode_encoded",
            "decode_raw",
            "channels",
            "_decoded",
        },
    ),
}
SKIPPED_OPERATORS = re.compile(r"ReplaceBinaryOperator_\w+_(Pow|RShift|LShift|BitXor|Mod)$")


@dataclass
class Survivor:
    line: int
    function: str | None
    operator: str
    diff: str


@dataclass
class ModuleReport:
    module: str
    tests: list[str]
    mutants: int = 0
    killed: int = 0
    survived: int = 0
    seconds: float = 0.0
    survivors: list[Survivor] = field(default_factory=list)

    @property
    def score(self) -> float:
        return round(self.killed / self.mutants, 4) if self.mutants else 0.0


def working_tree_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [name for name in listed.splitlines() if (ROOT / name).is_file()]


@contextmanager
def worker_copies(count: int) -> Iterator[Queue[Path]]:
    """`count` copies of the working tree, each importable as polypstream (via `.alias`)."""
    files = working_tree_files()
    with tempfile.TemporaryDirectory(prefix="polypstream-mutation-") as tmp:
        copies: Queue[Path] = Queue()
        for k in range(count):
            copy = Path(tmp) / f"worker{k}"
            for name in files:
                (copy / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, copy / name)
            (copy / ".alias").mkdir()
            (copy / ".alias" / "polypstream").symlink_to(copy / "service")
            copies.put(copy)
        yield copies


def test_command(copy: Path, tests: list[str]) -> str:
    return (
        f"env PYTHONPATH={copy / '.alias'} {sys.executable} -m pytest -x -q -p no:cacheprovider "
        f"-o addopts='--strict-markers' {' '.join(tests)}"
    )


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) (line, column) of every annotation: under `from __future__ import annotations`
    (every core module) they are never evaluated, so mutating them changes nothing."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        annotations = []
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            annotations.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            annotations.append(node.returns)
        for a in annotations:
            assert a.end_lineno is not None and a.end_col_offset is not None
            spans.append(((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)))
    return spans


def skip_unwanted(session: Path, source: str, functions: set[str] | None) -> None:
    """Mark as skipped the mutants outside the chosen functions, of a skipped operator, or in an
    annotation."""
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    assert "from __future__ import annotations" in source
    spans = annotation_spans(source)

    def in_annotation(start: tuple[int, int]) -> bool:
        return any(begin <= start < end for begin, end in spans)

    with use_db(str(session)) as db:
        skipped = [
            item.job_id
            for item in db.work_items
            for spec in item.mutations
            if SKIPPED_OPERATORS.search(spec.operator_name)
            or (functions is not None and spec.definition_name not in functions)
            or in_annotation(tuple(spec.start_pos))
        ]
        db.set_multiple_results(skipped, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="not mutated"))


def run_module(module: str, copy: Path, timeout_s: float) -> ModuleReport:
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    tests, functions = TESTS[module]
    report = ModuleReport(module, tests)
    config, session = copy / f"{module}.toml", copy / f"{module}.sqlite"
    command = test_command(copy, tests).replace('"', '\\"')
    config.write_text(
        f'[cosmic-ray]\nmodule-path = "service/{module}.py"\ntimeout = {timeout_s}\nexcluded-modules = []\n'
        f'test-command = "{command}"\n[cosmic-ray.distributor]\nname = "local"\n'
    )
    started = time.monotonic()
    cosmic_ray = [str(Path(sys.executable).parent / "cosmic-ray")]
    subprocess.run([*cosmic_ray, "init", str(config), str(session)], cwd=copy, check=True, capture_output=True)
    skip_unwanted(session, (copy / f"service/{module}.py").read_text(), functions)
    subprocess.run([*cosmic_ray, "exec", str(config), str(session)], cwd=copy, check=True, capture_output=True)
    report.seconds = round(time.monotonic() - started, 1)
    with use_db(str(session)) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome is WorkerOutcome.SKIPPED:
                continue
            report.mutants += 1
            if result.test_outcome is TestOutcome.SURVIVED:
                report.survived += 1
                (spec,) = item.mutations
                report.survivors.append(
                    Survivor(spec.start_pos[0], spec.definition_name, spec.operator_name, result.diff or "")
                )
            else:
                report.killed += 1
    report.survivors.sort(key=lambda s: s.line)
    return report


def recheck(report_path: Path, modules: list[str], unit_only: bool, timeout_s: float) -> int:
    """Apply each survivor of an earlier report (its diff) to a copy of the working tree and run
    the module's tests: which survive the tests as they are now. Minutes where a new run takes an
    hour; mutants the source has moved away from are said, not counted."""
    report = json.loads(report_path.read_text())["modules"]
    with worker_copies(1) as copies:
        copy = copies.get()
        for module in modules:
            if module not in report:
                continue
            tests = [t for t in TESTS[module][0] if not (unit_only and t.startswith("tests/integration/"))]
            path = copy / f"service/{module}.py"
            original = path.read_text()
            killed, left, stale = 0, [], 0
            for survivor in report[module]["survivors"]:
                diff = survivor["diff"]
                applied = subprocess.run(
                    ["patch", "--no-backup-if-mismatch", "-s", str(path)],
                    input=diff[diff.index("--- a/"):], text=True, capture_output=True,
                )  # fmt: skip
                if applied.returncode != 0:
                    stale += 1
                    path.write_text(original)
                    continue
                try:
                    command = shlex.split(test_command(copy, tests))  # no shell: a timeout kills pytest itself
                    failed = subprocess.run(command, cwd=copy, capture_output=True, timeout=timeout_s).returncode != 0
                except subprocess.TimeoutExpired:
                    failed = True  # the tests hang on the mutant: caught, as in a run
                path.write_text(original)
                if failed:
                    killed += 1
                else:
                    left.append(f"  {survivor['line']} {survivor['function']} {survivor['operator'].split('/')[-1]}")
            print(f"{module}: {killed} of {len(report[module]['survivors'])} survivors killed now"
                  f"{f', {stale} no longer apply' if stale else ''}; left:", *left, sep="\n", flush=True)  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", default=",".join(TESTS), help="comma-separated, of: " + ", ".join(TESTS))
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2)))
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant's tests")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    parser.add_argument("--recheck", type=Path, default=None, help="a report: run its survivors against the tests now")
    parser.add_argument("--unit-only", action="store_true", help="with --recheck: leave out the integration tests")
    args = parser.parse_args(argv)
    modules = [m for m in args.modules.split(",") if m]
    unknown = set(modules) - set(TESTS)
    if unknown:
        parser.error(f"unknown modules: {', '.join(sorted(unknown))}")
    if args.recheck is not None:
        return recheck(args.recheck, modules, args.unit_only, args.timeout)
    import cosmic_ray  # noqa: F401  (fail early, with pip's name for it)

    lock = threading.Lock()
    reports: dict[str, ModuleReport] = {}
    with worker_copies(min(args.workers, len(modules))) as copies:

        def one(module: str) -> None:
            copy = copies.get()
            try:
                report = run_module(module, copy, args.timeout)
            finally:
                copies.put(copy)
            with lock:
                reports[module] = report
                print(f"{module}: {report.killed}/{report.mutants} killed ({report.score:.1%}), "
                      f"{report.survived} survived, {report.seconds:.0f} s", flush=True)  # fmt: skip

        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            for future in [pool.submit(one, m) for m in modules]:
                future.result()
    from importlib.metadata import version

    payload = {
        "tool": f"cosmic-ray {version('cosmic-ray')}",
        "command": "python -m benchmarks.mutation " + " ".join(argv if argv is not None else sys.argv[1:]),
        "skipped_operators": SKIPPED_OPERATORS.pattern,
        "modules": {
            m: {**asdict(reports[m]), "score": reports[m].score} for m in modules
        },
    }  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
