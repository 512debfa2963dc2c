"""Run a test module's Triton-kernel tests on the CPU under the Triton interpreter, in a child process.

Triton decides interpreter mode when ``triton`` (and ``triton.language``) is imported and when a
kernel is decorated, so ``TRITON_INTERPRET=1`` must be set before the first ``import triton`` of a
process, and once set it applies to every kernel of that process. To keep it out of the other test
modules (and to work whatever they imported before), a kernel test module runs itself once in a
child pytest process with ``TRITON_INTERPRET=1`` in its environment (and ``IS_CHILD`` true there);
in the parent process each test decorated with the module's :class:`InterpreterChild` reads its own
outcome (pass / fail with the child's message / skip with its reason) from the child's JUnit report.
The kernels run on CPU tensors there, at small sizes: the interpreter is slow.

Use in a test module (import this before triton, i.e. before the kernel module)::

    from _triton_interpreter import IS_CHILD, InterpreterChild
    in_interpreter = InterpreterChild(__file__)

    @in_interpreter
    def test_kernel(): ...          # runs in the child; the parent replays its outcome

Undecorated tests run in both processes: decorate them with :func:`parent_only` (or guard on
``IS_CHILD``) to run them in the parent only.
"""

from __future__ import annotations

import os

CHILD_FLAG = "_INTERP_KERNEL_TESTS_CHILD"
IS_CHILD = os.environ.get(CHILD_FLAG) == "1"
if IS_CHILD:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (the parent sets it too)

import functools  # noqa: E402
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import xml.etree.ElementTree as ET  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def triton_missing() -> str | None:
    """In the parent: why the interpreter tests cannot run (None if triton is installed)."""
    return "triton is not installed" if importlib.util.find_spec("triton") is None else None


class InterpreterChild:
    """Decorator factory for one test file: run that file once in a ``TRITON_INTERPRET=1`` child pytest
    (lazily, at the first decorated test of the parent), then replay each test's outcome."""

    def __init__(self, test_file: str | os.PathLike, timeout: float = 900.0):
        self.test_file = Path(test_file).resolve()
        self.timeout = timeout

    @functools.cached_property
    def results(self) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.xml"
            env = dict(os.environ, TRITON_INTERPRET="1", **{CHILD_FLAG: "1"})
            cmd = [sys.executable, "-m", "pytest", str(self.test_file), "-q", "-p", "no:cacheprovider",
                   f"--junitxml={report}", "-o", "junit_family=xunit1"]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=self.timeout,
                                  cwd=str(REPO_ROOT))
            tail = (proc.stdout + proc.stderr)[-4000:]
            if not report.exists():
                return {"__crash__": f"child pytest (rc {proc.returncode}) wrote no report:\n{tail}"}
            results = {}
            for case in ET.parse(report).getroot().iter("testcase"):
                outcome, message = "passed", ""
                for child in case:
                    if child.tag in ("failure", "error"):
                        outcome, message = "failed", f"{child.get('message', '')}\n{child.text or ''}"
                    elif child.tag == "skipped":
                        outcome, message = "skipped", child.get("message", "")
                results[case.get("name")] = (outcome, message)
            return results

    def __call__(self, fn):
        """Run ``fn`` in the interpreter child; in the parent, replay the child's outcome for this test."""

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if IS_CHILD:
                return fn(*args, **kwargs)
            missing = triton_missing()
            if missing is not None:
                pytest.skip(missing)
            results = self.results
            if "__crash__" in results:
                pytest.fail(results["__crash__"], pytrace=False)
            name = os.environ["PYTEST_CURRENT_TEST"].rsplit("::", 1)[-1].rsplit(" ", 1)[0]
            if name not in results:
                pytest.fail(f"{name} missing from the interpreter child's report", pytrace=False)
            outcome, message = results[name]
            if outcome == "skipped":
                pytest.skip(message)
            if outcome == "failed":
                pytest.fail(f"in the TRITON_INTERPRET=1 child process:\n{message}", pytrace=False)

        return wrapper


def parent_only(fn):
    """Run an undecorated test in the parent process only (skipped in the interpreter child)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if IS_CHILD:
            pytest.skip("runs in the parent process")
        return fn(*args, **kwargs)

    return wrapper
