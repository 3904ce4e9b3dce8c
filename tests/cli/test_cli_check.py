"""`sweeper check`: a spec's problems, or the size of its search, before any server or sweep exists."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cli import app

GRID = """\
name: g
model: mlp
dataset: digits
objective: {metric: val_accuracy}
hparams:
  units: {type: discrete, values: [16, 32, 64]}
  depth: {type: int_interval, min: 1, max: 3}
  optimizer: {type: discrete, values: [adam, sgd]}
  momentum: {type: real_interval, min: 0.5, max: 0.9, step: 0.2, when: {optimizer: sgd}}
search: {strategy: grid, grid_points: 3}
"""


def check(tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["check", str(path)], env={"COLUMNS": "200"})
    return result.exit_code, " ".join(result.output.split())


def test_check_shows_the_grid_size_counting_each_conditional_branch_once(tmp_path: Path) -> None:
    code, output = check(tmp_path, GRID)

    # units 3 x depth 3 x (adam 1 + sgd with 3 momentum steps)
    assert code == 0
    assert output.endswith("valid; grid of 36 configurations, 36 trials")


def test_check_says_when_max_trials_cuts_the_search_short(tmp_path: Path) -> None:
    code, output = check(tmp_path, GRID.replace("grid_points: 3}", "grid_points: 3, max_trials: 10}"))

    assert code == 0
    assert output.endswith("grid of 36 configurations, 10 trials (search.max_trials)")


def test_check_names_the_file_the_field_and_the_rule(tmp_path: Path) -> None:
    code, output = check(tmp_path, GRID.replace("when: {optimizer: sgd}", "when: {optimizer: lbfgs}"))

    assert code == 2
    assert f"{tmp_path / 'sweep.yaml'}:9: hparams.momentum.when.optimizer: optimizer never takes 'lbfgs'" in output


def test_check_refuses_a_misspelled_hparam_naming_its_line_and_the_names_the_model_reads(tmp_path: Path) -> None:
    code, output = check(tmp_path, GRID.replace("  units:", "  unitz:"))

    assert code == 2
    assert f"{tmp_path / 'sweep.yaml'}:6: hparams.unitz: model mlp reads no hparam 'unitz'; did you mean units?" \
        in output
    assert "depth" in output and "learning_rate" in output


def test_check_prints_every_problem_on_a_line_of_its_own_in_the_files_order(tmp_path: Path) -> None:
    broken = (GRID.replace("objective: {metric: val_accuracy}", "objective: {metric: val_acc}")
              .replace("  units:", "  unitz:")
              .replace("{type: int_interval, min: 1, max: 3}", "{type: int_interval, min: 3, max: 1}"))
    path = tmp_path / "sweep.yaml"
    path.write_text(broken)

    result = CliRunner().invoke(app, ["check", str(path)], env={"COLUMNS": "1000"})

    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert [line.split(": ")[1] for line in lines] == [f"{path}:4", f"{path}:6", f"{path}:7"], lines
    assert lines[0].endswith("objective.metric: 'val_acc' is not a metric the trial logs; with train.metrics "
                             "['accuracy'] it logs: loss, accuracy, val_loss, val_accuracy, learning_rate, num_params")
    assert lines[2] == f"error: {path}:7: hparams.depth: min (3) must be < max (1)"


def test_check_names_the_stopping_rule_and_its_rungs(tmp_path: Path) -> None:
    tuned = GRID.replace("search: {strategy: grid, grid_points: 3}", "search: {strategy: tpe, max_trials: 30}\n"
                         "stopping: {rule: asha, min_epochs: 1, reduction_factor: 3}\ntrain: {epochs: 27}")
    assert check(tmp_path, tuned) == (0, f"{tmp_path / 'sweep.yaml'}: valid; tpe search over a continuous space, 30 "
                                         "trials (search.max_trials); asha keeps 1 in 3 trials at 1, 3, 9, 27 epochs")

    code, output = check(tmp_path, tuned.replace("rule: asha", "rule: hyperband"))
    assert output.endswith("hyperband keeps 1 in 3 trials at each rung, in brackets whose first rung is at 1, 3, 9, "
                           "27 epochs")
    code, output = check(tmp_path, tuned.replace("rule: asha, min_epochs: 1", "rule: median, min_epochs: 4"))
    assert output.endswith("median stops trials below the median of completed ones from epoch 4 on")
