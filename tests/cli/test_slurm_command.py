"""`sweeper slurm` without a cluster: the batch script it submits (read, and run by bash with the variables
Slurm sets), where the worker token comes from, and the answers to bad options.

The tests against a real Slurm are in tests/slurm.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

TOKEN = "worker-slurm-0123456789abcdef"


def sweeper(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    clean = {name: None for name in os.environ if name.startswith("SWEEPER_")}
    result = CliRunner().invoke(app, list(args), env={**clean, "COLUMNS": "200", **(env or {})})
    return result.exit_code, result.output


def dry_run(*args: str, env: dict[str, str] | None = None) -> str:
    code, output = sweeper("slurm", "submit", "--dry-run", "--server", "http://head:8000", *args, env=env)
    assert code == 0, output
    return output


def directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def run_script(script: str, tmp_path: Path, **slurm_env: str) -> subprocess.CompletedProcess[str]:
    """The script as bash runs it on a node, with `echo` standing in for the sweeper command."""
    path = tmp_path / "job.sh"
    path.write_text(script)
    env = {"PATH": os.environ["PATH"], "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "3", **slurm_env}
    return subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env, timeout=30)


def with_command(tmp_path: Path, name: str, script: str) -> dict[str, str]:
    """An environment whose PATH finds `script` as the Slurm command `name` before any other."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(script)
    (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def owner_only_token_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "worker-token"
    path.write_text(TOKEN + "\n")
    path.chmod(mode)
    return path


def test_the_script_asks_for_one_gpu_per_task_and_a_sigterm_to_the_batch_shell_before_the_time_limit(
        tmp_path: Path) -> None:
    script = dry_run("--tasks", "8", "--max-running", "4", "--partition", "gpu", "--time", "4:00:00",
                     "--signal-lead", "600", "--output", str(tmp_path / "logs"), "--sbatch=--account=ml",
                     "--sbatch=--qos=low")
    assert script.startswith("#!/bin/bash\n")
    assert directives(script) == [
        "--job-name=sweeper-workers", "--array=0-7%4", f"--output={tmp_path / 'logs'}/%x-%A_%a.out",
        "--gres=gpu:1", "--partition=gpu", "--time=4:00:00", "--signal=B:TERM@600", "--account=ml", "--qos=low"]
    # The batch shell becomes the supervisor, which is where B: signals go.
    assert "\nexec " in script


def test_a_task_runs_one_worker_on_the_gpu_slurm_gave_it_under_an_id_that_names_the_task(tmp_path: Path) -> None:
    script = dry_run("--worker-command", "echo sweeper", "--idle-exit", "300", "--data-root", "/data",
                     "--plugins", "lab.models")

    ran = run_script(script, tmp_path, CUDA_VISIBLE_DEVICES="2")

    assert ran.returncode == 0, ran.stderr
    command = ran.stdout.splitlines()[-1].split()
    assert command == ["sweeper", "worker", "--server", "http://head:8000", "--gpus", "2", "--id-prefix",
                       "slurm-41_3", "--idle-exit", "300", "--data-root", "/data", "--plugins", "lab.models"]


def test_a_gpu_task_that_got_no_gpu_stops_saying_so(tmp_path: Path) -> None:
    ran = run_script(dry_run("--worker-command", "echo sweeper"), tmp_path)

    assert ran.returncode != 0
    assert "Slurm allocated no GPU to this task" in ran.stderr


def test_several_gpus_per_trial_ask_for_that_many_in_each_task(tmp_path: Path) -> None:
    script = dry_run("--gpus-per-trial", "4", "--worker-command", "echo sweeper")

    assert "--gres=gpu:4" in directives(script)
    command = run_script(script, tmp_path, CUDA_VISIBLE_DEVICES="0,1,2,3").stdout.split()
    assert command[command.index("--gpus"):command.index("--gpus") + 4] == ["--gpus", "0,1,2,3",
                                                                            "--gpus-per-trial", "4"]


def test_cpu_tasks_ask_for_no_gpu_and_run_one_cpu_worker(tmp_path: Path) -> None:
    script = dry_run("--gpus-per-trial", "none", "--cpus-per-task", "4", "--worker-command", "echo sweeper")

    assert not any(line.startswith("--gres") for line in directives(script))
    assert "--cpus-per-task=4" in directives(script)
    command = run_script(script, tmp_path).stdout.split()
    assert command[command.index("--gpus"):command.index("--gpus") + 4] == ["--gpus", "none", "--cpu-workers", "1"]


def test_setup_lines_run_before_the_worker(tmp_path: Path) -> None:
    script = dry_run("--gpus-per-trial", "none", "--setup", "echo loaded modules", "--worker-command", "echo sweeper")

    assert run_script(script, tmp_path).stdout.splitlines()[0] == "loaded modules"


def test_a_token_file_is_named_in_the_script_and_its_token_never_is(tmp_path: Path) -> None:
    path = owner_only_token_file(tmp_path)

    script = dry_run("--token-file", str(path), "--worker-command", "echo sweeper")

    assert TOKEN not in script
    command = run_script(script, tmp_path, CUDA_VISIBLE_DEVICES="0").stdout.split()
    assert command[command.index("--token-file") + 1] == str(path)


def test_a_token_from_the_environment_stays_out_of_the_script_which_checks_that_it_arrived(tmp_path: Path) -> None:
    script = dry_run("--gpus-per-trial", "none", "--worker-command", "echo sweeper",
                     env={"SWEEPER_WORKER_TOKEN": TOKEN})

    assert TOKEN not in script
    arrived = run_script(script, tmp_path, SWEEPER_TOKEN=TOKEN)
    assert arrived.returncode == 0
    missing = run_script(script, tmp_path)
    assert missing.returncode != 0 and "the worker token did not reach this task" in missing.stderr


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_token_file_that_others_may_read_is_refused_by_slurm_submit_and_by_worker(tmp_path: Path,
                                                                                   mode: int) -> None:
    path = owner_only_token_file(tmp_path, mode)

    for command in (["slurm", "submit", "--dry-run"], ["worker", "--gpus", "none"]):
        code, output = sweeper(*command, "--token-file", str(path))
        assert code == 2, output
        assert f"token file {path} has mode {stat.filemode(stat.S_IFREG | mode)}" in output
        assert f"chmod 600 {path}" in output


def test_a_missing_or_empty_token_file_is_refused_naming_it(tmp_path: Path) -> None:
    code, output = sweeper("slurm", "submit", "--dry-run", "--token-file", str(tmp_path / "absent"))
    assert code == 2 and f"token file {tmp_path / 'absent'}: cannot read it" in output
    empty = owner_only_token_file(tmp_path)
    empty.write_text("\n")
    code, output = sweeper("worker", "--token-file", str(empty))
    assert code == 2 and "must hold one token on one line, and holds nothing" in output


def test_a_token_given_both_ways_is_refused(tmp_path: Path) -> None:
    code, output = sweeper("worker", "--token", TOKEN, "--token-file", str(owner_only_token_file(tmp_path)))

    assert code == 2 and "not both" in output


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--time", "four hours", "--time: 'four hours' is none of Slurm's formats"),
    ("--partition", "gpu; rm -rf", "--partition: 'gpu; rm -rf' is not a partition name"),
    ("--sbatch", "account=ml", "--sbatch 'account=ml': give one sbatch option per line, as `--name=value`"),
    ("--gpus-per-trial", "0", "--gpus-per-trial: '0' is neither a number of GPUs (1 or more) nor `none`"),
    ("--job-name", "my job", "--job-name: 'my job' may hold letters, digits and _ . + - only"),
])
def test_bad_options_are_refused_naming_the_option(option: str, value: str, message: str) -> None:
    code, output = sweeper("slurm", "submit", "--dry-run", option, value)

    assert code == 2
    assert message in " ".join(output.split())


def test_status_and_cancel_refuse_what_is_not_a_job_id() -> None:
    for command in ("status", "cancel"):
        code, output = sweeper("slurm", command, "12; rm -rf /")
        assert code == 2 and "give the array's number" in output


def test_submit_where_slurm_is_not_installed_says_where_to_run_it(tmp_path: Path) -> None:
    code, output = sweeper("slurm", "submit", "--gpus-per-trial", "none", "--output", str(tmp_path / "logs"),
                           env={"PATH": str(tmp_path)})

    assert code == 1
    assert "`sbatch` is not installed here: run `sweeper slurm` where Slurm's commands are" in output


def test_a_worker_id_prefix_that_is_no_name_is_refused() -> None:
    code, output = sweeper("worker", "--gpus", "none", "--id-prefix", "my task")

    assert code == 2 and "--id-prefix 'my task': use 1 to 100 letters, digits and _ . : @ + -" in output


FAKE_SBATCH = """#!/bin/sh
cat > "$SBATCH_SEEN/script"
env > "$SBATCH_SEEN/environment"
echo "$@" > "$SBATCH_SEEN/arguments"
echo "4242;cluster"
"""


def test_submit_hands_sbatch_the_script_and_only_the_worker_token(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    env = {**with_command(tmp_path, "sbatch", FAKE_SBATCH), "SBATCH_SEEN": str(seen), "SWEEPER_WORKER_TOKEN": TOKEN,
           "SWEEPER_TOKEN": "admin-0123456789abcdef", "SWEEPER_ADMIN_TOKEN": "admin-0123456789abcdef"}

    code, output = sweeper("slurm", "submit", "--server", "http://head:8000", "--tasks", "3", "--output",
                           str(tmp_path / "logs"), env=env)

    assert code == 0, output
    assert "Submitted array job 4242: 3 task(s)" in output
    assert (seen / "arguments").read_text().split() == ["--parsable"]
    assert "#SBATCH --array=0-2" in (seen / "script").read_text()
    job_env = dict(line.split("=", 1) for line in (seen / "environment").read_text().splitlines() if "=" in line)
    assert job_env["SWEEPER_TOKEN"] == TOKEN
    assert "SWEEPER_ADMIN_TOKEN" not in job_env and "SWEEPER_WORKER_TOKEN" not in job_env
    assert (tmp_path / "logs").is_dir()  # sbatch would not create it, and the tasks could write no log


@pytest.mark.parametrize("answer", [
    "scancel: error: Kill job error on job id 5: Invalid job id specified",  # purged from slurmctld's memory
    "scancel: error: Kill job error on job id 5: Job/step already completing or completed",
])
def test_cancelling_an_array_that_has_ended_says_so_and_succeeds(tmp_path: Path, answer: str) -> None:
    # The sweep finished and the tasks left on their own before `sweeper slurm cancel` (CI saw this):
    # nothing is left to cancel, which is what was asked.
    env = with_command(tmp_path, "scancel", f"#!/bin/sh\necho '{answer}' >&2\nexit 1\n")

    code, output = sweeper("slurm", "cancel", "5", env=env)

    assert code == 0, output
    assert "Nothing to cancel: 5 ended already" in output


def test_cancel_still_reports_any_other_scancel_error(tmp_path: Path) -> None:
    env = with_command(tmp_path, "scancel", "#!/bin/sh\necho 'scancel: error: Access/permission denied' >&2\nexit 1\n")

    code, output = sweeper("slurm", "cancel", "5", env=env)

    assert code == 1 and "Access/permission denied" in output
