import os
import subprocess
import sys


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RANKSTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "rankstream.cli.main", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_setting_fails_at_start_naming_the_variable() -> None:
    done = run_cli("serve", RANKSTREAM_TOP_K="lots")
    assert done.returncode == 2
    assert "RANKSTREAM_TOP_K" in done.stderr


def test_serve_without_a_model_says_what_to_set() -> None:
    done = run_cli("serve")
    assert done.returncode == 2
    assert "RANKSTREAM_MODEL_DIR" in done.stderr


def test_a_folder_without_artifacts_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    done = run_cli("serve", RANKSTREAM_MODEL_DIR=str(tmp_path))
    assert done.returncode == 2
    assert "holds no artifact" in done.stderr


def test_help_lists_the_commands() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    for cmd in ("stack", "prepare", "load", "compress", "serve", "replay", "eval", "recs", "demo"):
        assert cmd in done.stdout


def test_a_user_mistake_is_one_line_and_verbose_adds_the_trace(tmp_path) -> None:  # type: ignore[no-untyped-def]
    quiet = run_cli("serve", RANKSTREAM_MODEL_DIR=str(tmp_path))
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines()[-1].startswith("rankstream: error: ")
    loud = run_cli("-v", "serve", RANKSTREAM_MODEL_DIR=str(tmp_path))
    assert loud.returncode == 2 and "Traceback" in loud.stderr


def test_exit_codes_follow_the_error_class() -> None:
    from rankstream.stream.errors import ArtifactError, ConfigError, JobError, RankstreamError, StoreError

    codes = [e.exit_code for e in (RankstreamError, ConfigError, ArtifactError, JobError, StoreError)]
    assert codes == [1, 2, 3, 4, 5]


def test_bench_events_refuses_a_half_life_that_is_not_a_positive_number_of_days() -> None:
    for bad in ("0", "-7", "nan"):
        done = run_cli("bench", "events", "--half-life", bad)
        assert done.returncode == 2 and "--half-life is a positive number of days" in done.stderr, done.stderr
