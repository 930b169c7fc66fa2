"""The GPU check's own parts, on any machine: the test sample, the counts
read from a log, the wheels left to the device, the time guard."""

import signal
import sys

from integration import gpu_check
from integration.gpu_sample import sampled


def _function_of(test_id):
    return test_id.split("[", 1)[0]


def test_the_sample_keeps_every_test_function_on_cases_spread_over_its_grid():
    ids = [f"t.py::grid[{case}]" for case in range(6)] + ["t.py::single"]
    assert sampled(ids, 2, key=_function_of) == [
        "t.py::grid[0]",
        "t.py::grid[3]",
        "t.py::single",
    ]
    assert sampled(ids, 10, key=_function_of) == ids


def test_counts_come_from_the_lines_of_a_run_interrupted_before_its_summary():
    log = "\n".join(
        [
            "tests/a.py::test_x[1] PASSED                    [ 10%]",
            "tests/a.py::test_x[with space] FAILED           [ 20%]",
            "tests/a.py::Case::test_y PASSED                 [ 30%]",
            "tests/a.py::test_z ERROR                        [ 40%]",
            "!!!!!!!!!!!!!!!!!!!! KeyboardInterrupt !!!!!!!!!!!!!!!!!!!!",
        ]
    )
    assert gpu_check.test_counts(log) == {
        "counts": {"passed": 2, "failed": 1, "error": 1},
        "pytest_summary": None,
    }


def test_the_backends_and_what_they_bring_are_left_to_the_device():
    left = ["NumPy", "ml_dtypes", "typing_extensions", "nvidia-cublas-cu12", "jaxlib"]
    carried = ["keras", "h5py", "pytest", "optree", "absl-py"]
    assert [gpu_check._carried(name) for name in left] == [False] * len(left)
    assert [gpu_check._carried(name) for name in carried] == [True] * len(carried)


def test_a_step_is_interrupted_at_its_limit_and_skipped_past_the_deadline(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(gpu_check, "GRACE_S", 1)
    monkeypatch.setattr(gpu_check, "RESERVE_S", 0)
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 1.5)
    steps = gpu_check.Steps(deadline_s=3.5, echo=lambda text: None)
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    log = tmp_path / "log"
    interrupted = steps.run("sleep", sleep, 2, log)
    skipped = steps.run("late", sleep, 60, log)
    assert (interrupted["status"], interrupted["limit_s"]) == ("timed out", 2)
    # Ended by a signal: SIGINT, or SIGKILL where it outlived the grace period.
    assert interrupted["returncode"] in (-signal.SIGINT, -signal.SIGKILL)
    assert skipped["status"] == "skipped"
    assert steps.records == [interrupted, skipped]
